"""A sweep's results: each run's metrics aggregated over its seeds (mean, std, n), written as results.json, the
Markdown tables of results.md (the main one, one per question, the learning curves) and the plots."""

from __future__ import annotations

import json
import math

import numpy as np

from gatedgpt2.data.run_files import save_figure, write_atomically, write_json
from gatedgpt2.eval.statistics import holm, mcnemar, paired_difference, pooled_variance

from .sweep_spec import Sweep


def aggregate(records: list[dict]) -> dict:
    """{metric: {"mean", "std", "n", "values"}} over the seeds of one run (std with ddof=1; 0 for one seed)."""
    names = sorted({m for r in records for m, v in r["metrics"].items() if isinstance(v, (int, float))})
    summary = {}
    for name in names:
        values = [float(r["metrics"][name]) for r in records
                  if isinstance(r["metrics"].get(name), (int, float)) and not math.isnan(r["metrics"][name])]
        if values:
            summary[name] = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1
                             else 0.0, "n": len(values), "values": values}
    return summary


def comparisons(sweep: Sweep, records: dict) -> dict:
    """Each of the sweep's `comparisons` (`runs`: a reference, then the runs compared with it): per metric and run,
    the paired difference run - reference, Holm-adjusted over the family of runs; and for a zero-shot task the
    item-by-item test per seed (from each run's `zero_shot/<task>/correct.json`)."""
    tables = {}
    for title, comparison in sweep.comparisons.items():
        reference, *others = comparison["runs"]
        table = {}
        for metric in comparison["metrics"]:
            def values(run):
                return {r["seed"]: float(r["metrics"][metric]) for r in records.get(run, [])
                        if isinstance(r["metrics"].get(metric), (int, float))}

            entries = {run: paired_difference(values(reference), values(run)) for run in others}
            entries = {run: e for run, e in entries.items() if e is not None}
            pooled_variance(entries, [values(run) for run in comparison["runs"]])
            for key in ("p_paired_t", "p_welch", "p_pooled"):
                for e, adjusted in zip(entries.values(), holm([e[key] for e in entries.values()])):
                    e[f"{key}_holm"] = adjusted
            for run, e in entries.items():
                items = {}
                for seed in e["seeds"]:
                    paths = [sweep.work_dir / r / f"seed{seed}" / "zero_shot" / metric / "correct.json"
                             for r in (reference, run)]
                    if all(p.is_file() for p in paths):
                        items[seed] = mcnemar(*(json.loads(p.read_text()) for p in paths))
                if items:
                    e["items_by_seed"] = items
            if entries:
                table[metric] = entries
        tables[title] = {"reference": reference, "metrics": table}
    return tables


def _comparison_table(title: str, comparison: dict) -> list[str]:
    reference = comparison["reference"]
    lines = [f"### {title}", "", f"Each run - `{reference}`, paired by seed; 95% CI from the t distribution over the "
             "seeds' differences; d_z = mean / std of the differences; p from the paired t-test, from Welch's test "
             "(the seeds taken as unpaired) and from a t-test with the seed variance pooled over every run of the "
             "family (with its 95% CI), each Holm-adjusted over the runs compared with the reference; items: those "
             "only the reference / only the run gets right, with McNemar's exact p, per seed.", "",
             f"| metric | run | {reference} | run | difference (mean ± std) | 95% CI | paired t p (Holm) | d_z | "
             "Welch p (Holm) | pooled 95% CI | pooled p (Holm) | seeds | items per seed |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for metric, entries in comparison["metrics"].items():
        for run, e in entries.items():
            digits = 2 if abs(e["a_mean"]) >= 10 else 4
            items = "; ".join(f"{seed}: {i['only_a']}/{i['only_b']}, p {i['p']:.2g}"
                              for seed, i in e.get("items_by_seed", {}).items()) or "-"
            d_z = f"{e['d_z']:.2f}" if e["d_z"] is not None else "-"
            lines.append(
                f"| {metric} | {run} | {e['a_mean']:.{digits}f} | {e['b_mean']:.{digits}f} | {e['mean']:+.{digits}f} ± "
                f"{e['std']:.{digits}f} | [{e['ci95'][0]:+.{digits}f}, {e['ci95'][1]:+.{digits}f}] | "
                f"{e['p_paired_t']:.2g} ({e['p_paired_t_holm']:.2g}) | {d_z} | {e['p_welch']:.2g} "
                f"({e['p_welch_holm']:.2g}) | [{e['ci95_pooled'][0]:+.{digits}f}, {e['ci95_pooled'][1]:+.{digits}f}] | "
                f"{e['p_pooled']:.2g} ({e['p_pooled_holm']:.2g}) | {len(e['seeds'])} | {items} |")
    return lines


def write_results(sweep: Sweep) -> dict:
    records = {run: [json.loads(sweep.result_path(run, s).read_text()) for s in sweep.seeds
                     if sweep.result_path(run, s).is_file()] for run in sweep.runs}
    results = {run: {"overrides": sweep.runs[run], "seeds": [r["seed"] for r in done], "metrics": aggregate(done),
                     "wall_time_s": float(sum(r["wall_time_s"] for r in done))}
               for run, done in records.items() if done}
    payload = {"sweep": str(sweep.path), "config": str(sweep.config), "common": sweep.common, "seeds": sweep.seeds,
               "runs": results}
    curves = {run: [r["metrics"]["curve"] for r in records[run] if "curve" in r["metrics"]] for run in results}
    if any(curves.values()):
        payload["curves"] = curves
    if sweep.comparisons:
        payload["comparisons"] = comparisons(sweep, records)
    sweep.results.mkdir(parents=True, exist_ok=True)
    write_json(sweep.results / "results.json", payload)
    write_atomically(sweep.results / "results.md", results_markdown(sweep, results, curves, payload.get("comparisons")))
    plot(sweep, results)
    if "curves" in payload:
        plot_curves(sweep, curves)
    return payload


def _columns(sweep: Sweep, results: dict) -> list[str]:
    present = {m for r in results.values() for m in r["metrics"]}
    return [m for m in sweep.metrics if m in present] if sweep.metrics else sorted(present)


def _cell(entry: dict | None, large: bool) -> str:
    if entry is None:
        return "-"
    digits = 1 if large else 3  # accuracies in % and runtimes to 0.1; losses, gates and shares to 0.001
    if entry["n"] == 1:  # one seed has no spread to show
        return f"{entry['mean']:.{digits}f}"
    return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}"


def _table(sweep: Sweep, results: dict, runs: list[str], columns: list[str]) -> list[str]:
    lines = ["| run | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
    for run in runs:
        if run not in results:
            lines.append(f"| {run} (not run yet) |" + " - |" * len(columns))
            continue
        metrics = results[run]["metrics"]
        cells = [_cell(metrics.get(c), c in metrics and abs(metrics[c]["mean"]) >= 10) for c in columns]
        done = len(results[run]["seeds"])
        seeds = "" if done == len(sweep.seeds) else f" ({done} seed{'s' if done > 1 else ''})"
        lines.append(f"| {run}{seeds} | " + " | ".join(cells) + " |")
    return lines


def _mean_curve(seeds: list[dict]) -> dict | None:
    """The seeds' learning curves averaged point by point (words and every task all seeds have); None when there are
    none or their revisions differ in number (final word counts differ a little, revisions not at all)."""
    if not seeds or len({len(c["words"]) for c in seeds}) != 1:
        return None
    return {key: np.mean([c[key] for c in seeds], 0).tolist() for key in set.intersection(*(set(c) for c in seeds))}


def _curve_table(curves: dict) -> list[str]:
    """Zero-shot accuracy at each words-seen revision, a row per (run, revision), the mean over seeds."""
    tasks = sorted({t for seeds in curves.values() for c in seeds for t in c if t != "words"})
    lines = ["| run | words seen | " + " | ".join(tasks) + " |", "| --- | ---: |" + " ---: |" * len(tasks)]
    for run, seeds in curves.items():
        mean = _mean_curve(seeds)
        for k, words in enumerate(mean["words"] if mean else []):
            cells = [f"{mean[t][k]:.1f}" if t in mean else "-" for t in tasks]
            lines.append(f"| {run} | {words:,.0f} | " + " | ".join(cells) + " |")
    return lines


def results_markdown(sweep: Sweep, results: dict, curves: dict | None = None, paired: dict | None = None) -> str:
    """The main table (every finished run, the sweep's `metrics`), then the sweep's `tables`, each a question, its
    `comparisons`, then the zero-shot learning curves if the runs have them."""
    spread = "one seed, so no std" if len(sweep.seeds) == 1 else f"mean ± std over seeds {sweep.seeds}"
    lines = [f"Generated by `python -m gatedgpt2.pipeline.sweep {sweep.path}` ({spread}).", "",
             *_table(sweep, results, list(results), _columns(sweep, results))]
    for title, table in sweep.tables.items():
        lines += ["", f"### {title}", "", *_table(sweep, results, table["runs"], table["metrics"])]
    for title, comparison in (paired or {}).items():
        lines += ["", *_comparison_table(title, comparison)]
    if curves and any(curves.values()):
        lines += ["", "### Learning curves: zero-shot accuracy by words seen", "", *_curve_table(curves)]
    return "\n".join(lines) + "\n"


def plot(sweep: Sweep, results: dict) -> None:
    """One bar chart per table column: the mean over seeds of every run, with the std as error bars and each seed
    as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = _columns(sweep, results)
    if not columns or not results:
        return
    runs = list(results)
    width = max(6.0, 0.35 * len(runs) + 2)
    fig, axes = plt.subplots(len(columns), 1, figsize=(width, 2.2 * len(columns)), squeeze=False, sharex=True)
    for ax, column in zip(axes[:, 0], columns):
        entries = [results[r]["metrics"].get(column) for r in runs]
        means = [e["mean"] if e else np.nan for e in entries]
        stds = [e["std"] if e else 0.0 for e in entries]
        ax.bar(range(len(runs)), means, yerr=stds, color="#8fb3d9", capsize=2)
        for i, e in enumerate(entries):
            if e:
                ax.scatter([i] * len(e["values"]), e["values"], s=6, color="k", zorder=3)
        ax.set_ylabel(column, fontsize=7)
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xticks(range(len(runs)), runs, rotation=60, ha="right", fontsize=7)
    fig.tight_layout()
    save_figure(fig, sweep.results / "results.png", dpi=110)
    plt.close(fig)


def plot_curves(sweep: Sweep, curves: dict) -> None:
    """learning_curves.png: each zero-shot task's accuracy against words seen, one line per run (mean over seeds,
    each seed faint)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({t for run in curves.values() for c in run for t in c if t != "words"})
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for k, (run, seeds) in enumerate(curves.items()):
            colour = f"C{k}"
            for c in seeds:
                ax.plot(c["words"], c[task], color=colour, alpha=0.3, lw=0.8)
            mean = _mean_curve(seeds)
            if mean and task in mean:
                ax.plot(mean["words"], mean[task], color=colour, marker="o", label=run)
        ax.set_xscale("log")
        ax.set_xlabel("words seen")
        ax.set_ylabel(f"{task} accuracy (%)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, sweep.results / "learning_curves.png", dpi=110)
    plt.close(fig)
