"""`python -m trainer.sweep configs/sweeps/<name>.yaml`: train a grid of runs on one budget and seeds, evaluate each,
and write one results table (Markdown + JSON) and plots.

A sweep file names a train.py config every run starts from, the settings all runs share (the budget), the seeds, the
evaluations, and the runs as train.py keys that make each one a variant:

    config: ../demo.yaml              # relative to the sweep file
    common: {num_train_epochs: 4}     # the shared budget
    seeds: [0, 1, 2]
    evaluate: [world, gates, knockout] # and/or zero_shot (with a `zero_shot:` mapping of its arguments)
    metrics: [vqa, gate_content]      # the main table's columns (default: every metric)
    tables:                           # optional: more tables, one per question
      global vs patches: {runs: [base, patches], metrics: [winoground_relation]}
    work_dir: outputs/sweeps/world    # checkpoints (large, git-ignored)
    results: experiments/grounded_world  # per-run JSON, results.{json,md}, plots (small, committed)
    runs:
      base: {}
      gate_none: {gate: none}

Each (run, seed) trains in its own `train.py` process and is evaluated in this one; its metrics go to
`results/runs/<run>/seed<seed>.json`. A rerun skips every (run, seed) whose JSON exists, and evaluates without
training again any whose checkpoint exists, so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import yaml

from .arguments import load_yaml

ROOT = Path(__file__).resolve().parent.parent
EVALUATIONS = ("world", "gates", "knockout", "zero_shot")
CONCRETENESS = ROOT.parent / "shared" / "data" / "norms" / "brysbaert_concreteness.tsv"


class Sweep:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        spec = yaml.safe_load(self.path.read_text()) or {}
        known = {"config", "common", "seeds", "evaluate", "work_dir", "results", "runs", "zero_shot", "metrics", "tables"}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ValueError(f"{self.path}: unknown keys {unknown}; expected some of {sorted(known)}")
        for key in ("config", "runs", "work_dir", "results"):
            if key not in spec:
                raise ValueError(f"{self.path}: missing key {key!r}")
        self.config = self.path.parent / spec["config"]
        if not self.config.is_file():
            raise FileNotFoundError(f"{self.path}: config {self.config} does not exist")
        self.common = spec.get("common") or {}
        self.seeds = [int(s) for s in spec.get("seeds", [0])]
        self.evaluate = list(spec.get("evaluate", ["world"]))
        bad = sorted(set(self.evaluate) - set(EVALUATIONS))
        if bad:
            raise ValueError(f"{self.path}: unknown evaluations {bad}; expected some of {list(EVALUATIONS)}")
        self.zero_shot = spec.get("zero_shot") or {}
        if "zero_shot" in self.evaluate and "data" not in self.zero_shot:
            raise ValueError(f"{self.path}: evaluate lists zero_shot, so a `zero_shot:` mapping with `data:` is needed")
        self.work_dir, self.results = Path(spec["work_dir"]), Path(spec["results"])
        self.runs = {str(name): (overrides or {}) for name, overrides in spec["runs"].items()}
        self.metrics = spec.get("metrics")  # the table's columns; default: all
        self.tables = spec.get("tables") or {}  # {title: {runs: [...], metrics: [...]}}: one table per question
        for title, table in self.tables.items():
            if not isinstance(table, dict) or set(table) != {"runs", "metrics"}:
                raise ValueError(f"{self.path}: table {title!r} must be a mapping with `runs` and `metrics` lists")
            unknown_runs = sorted(set(table["runs"]) - set(self.runs))
            if unknown_runs:
                raise ValueError(f"{self.path}: table {title!r} names runs not in `runs`: {unknown_runs}")
        for run in self.runs:
            self.ancestry(run)  # a run that starts from a missing run is an error now, not hours into the sweep

    def train_config(self, run: str, seed: int) -> dict:
        """The full train.py config of one (run, seed): base config, then the shared budget, then the run. String
        values may name `{seed}` and `{work_dir}`, so that a run can continue from an earlier run's checkpoint."""
        overrides = {key: value.format(seed=seed, work_dir=self.work_dir) if isinstance(value, str) else value
                     for key, value in self.runs[run].items()}
        values = {**load_yaml(self.config), **self.common, **overrides}
        values.update(seed=seed, output_dir=str(self.work_dir / run / f"seed{seed}"), report=True)
        return values

    def depends_on(self, run: str) -> str | None:
        """The run whose output this run starts from (`model_name_or_path` or `init_from_gpt2` under
        `{work_dir}/<run>/`), if any."""
        overrides = self.runs[run]
        start = str(overrides.get("model_name_or_path") or overrides.get("init_from_gpt2") or "")
        if not start.startswith("{work_dir}/"):
            return None
        parent = start.removeprefix("{work_dir}/").split("/")[0]
        if parent not in self.runs:
            raise ValueError(f"{self.path}: run {run!r} starts from {start!r}, but there is no run {parent!r}")
        return parent

    def ancestry(self, run: str) -> list[str]:
        """The run, the run it starts from, that run's start, and so on."""
        chain = [run]
        while parent := self.depends_on(chain[-1]):
            if parent in chain:
                raise ValueError(f"{self.path}: runs start from each other in a circle: {' -> '.join([*chain, parent])}")
            chain.append(parent)
        return chain

    def result_path(self, run: str, seed: int) -> Path:
        return self.results / "runs" / run / f"seed{seed}.json"


def prepare_world(config: dict) -> None:
    """Generate the grounded world a run reads, before its training process starts: a run may name the world's files
    as ordinary data files (e.g. captions next to BabyLM text), and parallel lanes must not write it at once."""
    from .arguments import DataArguments
    from .run import resolve_world

    keys = ("world_dir", "world_seed", "world_captions", "world_sentences", "text_dir", "caption_files")
    data_args = DataArguments(**{k: config[k] for k in keys if k in config})
    if config.get("model_name_or_path"):
        return
    # A run that names the world's files directly gets the world generated only if it is missing: an existing world
    # there may have been written with another spec, which only its own files describe.
    if data_args.uses_world or ("world_dir" in config and not (Path(data_args.world_dir) / "world.json").is_file()):
        resolve_world(data_args)


def train(config: dict) -> None:
    prepare_world(config)
    out = Path(config["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    path = out / "sweep_config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    subprocess.run([sys.executable, str(ROOT / "train.py"), str(path)], check=True, cwd=ROOT)


def word_class_gates(pooled: dict) -> dict:
    """Mean gate over content-word and function-word occurrences, from the per-POS groups."""
    from eval.gates import CONTENT_POS, FUNCTION_POS

    groups = pooled["pos"]["groups"]
    result = {}
    for name, tags in (("content", CONTENT_POS), ("function", FUNCTION_POS)):
        chosen = [g for pos, g in groups.items() if pos in tags and isinstance(g, dict)]
        n = sum(g["n"] for g in chosen)
        result[f"gate_{name}"] = sum(g["mean"] * g["n"] for g in chosen) / n if n else None
    return result


def gate_metrics(model, tokenizer, world: Path, image_tokens: str, out_dir: Path) -> dict:
    from eval.gates import Norms, gate_analysis, word_frequencies
    from trainer.data import iter_text_lines, load_caption_shards, read_captions, text_files

    captions, store = load_caption_shards(
        [world / "captions" / "dev_captions.json"],
        [world / "captions" / ("dev_tokens.npy" if image_tokens == "cls_patches" else "dev_embeddings.npy")])
    frequencies = word_frequencies([*iter_text_lines(text_files(world / "text" / "train")),
                                    *read_captions(world / "captions" / "train_captions.json")])
    norms = [Norms.load(str(CONCRETENESS))] if CONCRETENESS.is_file() else []
    summary = gate_analysis(model, tokenizer, captions, store, out_dir, norms, frequencies, progress=False)
    pooled = summary["by_layer"]["pooled"]
    metrics = {"gate_mean": pooled["mean_gate"], **word_class_gates(pooled)}
    if pooled["pos"]["kruskal_wallis"]:
        metrics["gate_pos_kw_h"] = pooled["pos"]["kruskal_wallis"]["H"]
    if norms:
        metrics["gate_concreteness_rho"] = pooled["norms"][norms[0].name]["per_occurrence"]["rho"]
        metrics["gate_concreteness_rho_by_type"] = pooled["norms"][norms[0].name]["per_word_type"]["rho"]
        terms = {"concreteness (z)": "concreteness", "log frequency (z)": "log_frequency",
                 "content x concreteness (z)": "content_x_concreteness",
                 "content x log frequency (z)": "content_x_log_frequency"}
        for fit in (pooled["regression"], pooled["regression_content_interactions"]):
            for term, values in (fit or {}).get("coefficients", {}).items():
                if term in terms and f"gate_beta_{terms[term]}" not in metrics:
                    metrics[f"gate_beta_{terms[term]}"] = values["beta"]
                    metrics[f"gate_beta_{terms[term]}_p"] = values["p"]
    return metrics


def knockout_metrics(model, tokenizer, world: Path) -> dict:
    """VQA with the CLS token, the patches or one random patch knocked out (`vqa_knockout_<condition>`: post-softmax
    weights zeroed; `vqa_knockout_renormalised_<condition>`: keys masked, the rest renormalised), and the CLS token's
    share of text-to-image attention: a narrow gate is a CLS token whose removal costs what removing the image costs."""
    from eval.images import ImageEmbeddings
    from eval.narrow_gate import attention_profile, knockout_table
    from trainer.data import load_caption_shards

    images = ImageEmbeddings.load(world / "eval" / "images" / "tokens.npy")
    tables = knockout_table(model, tokenizer, world / "eval", images, tasks=("vqa",))
    metrics = {f"vqa_knockout_{condition}": scores["vqa"] for condition, scores in tables["zeroed"].items()}
    metrics.update({f"vqa_knockout_renormalised_{condition}": scores["vqa"]
                    for condition, scores in tables["renormalised"].items() if condition != "none"})
    captions, store = load_caption_shards([world / "captions" / "dev_captions.json"],
                                          [world / "captions" / "dev_tokens.npy"])
    rows = np.arange(min(len(captions), 512))
    profile = attention_profile(model, tokenizer, [captions[i] for i in rows], store.rows(rows), rows)
    metrics["cls_attention_share"] = float(np.mean([layer["cls"] for layer in profile.values()]))
    metrics["max_image_token_share"] = float(np.mean([max(layer["cls"], layer["max_patch"])
                                                      for layer in profile.values()]))
    return metrics


def zero_shot_metrics(model, tokenizer, options: dict, run_dir: Path) -> dict:
    """The zero-shot tasks' accuracies; with `revisions: true` also a learning curve over the run's words-seen
    revisions (train.py's `revision_words`) and the final model: {"words": [...], "<task>": [...]} under "curve"."""
    from eval.__main__ import load_checkpoint
    from eval.zero_shot import zero_shot

    from .training import parse_revision_words

    tasks = options.get("tasks", "blimp,supplement")
    tasks = tasks.split(",") if isinstance(tasks, str) else list(tasks)

    def score(network, out_dir: Path) -> dict:
        results = zero_shot(network, tokenizer, ROOT / options["data"], tasks, fast=options.get("fast", True),
                            out_dir=out_dir, progress=False)
        return {name: task["accuracy"] for name, task in results["tasks"].items()}

    metrics = score(model, run_dir / "zero_shot")
    if options.get("revisions"):
        revisions = sorted((parse_revision_words(p.name.removeprefix("chck_"))[0], p)
                           for p in (run_dir / "revisions").glob("chck_*"))
        curve = {"words": [], **{task: [] for task in metrics}}
        for words, revision in revisions:
            network, _ = load_checkpoint(str(revision), device="cpu")
            scores = score(network, run_dir / "zero_shot" / revision.name)
            curve["words"].append(words)
            for task in metrics:
                curve[task].append(scores[task])
        history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
        curve["words"].append(max((e["words_seen"] for e in history if "words_seen" in e), default=None))
        for task in metrics:
            curve[task].append(metrics[task])
        metrics["curve"] = curve
    return metrics


def evaluate(sweep: Sweep, config: dict) -> dict:
    """Metrics of one trained run: its report's, then those of the evaluations the sweep lists (a LoRA run's adapter
    merged into its base). A masked LoRA run's knockout before / after fine-tuning comes from its report."""
    import torch

    from eval.__main__ import load_checkpoint

    out = Path(config["output_dir"])
    report = json.loads((out / "report" / "report.json").read_text())
    metrics = {"train_loss": report["train"].get("train_loss"), "train_runtime_s": report["train"].get("train_runtime")}
    if "world" in sweep.evaluate:
        if "world_eval" not in report:
            raise ValueError(f"{out}/report/report.json has no world_eval; the run must train on the world")
        metrics.update({k: v for k, v in report["world_eval"].items() if not isinstance(v, dict)})
    for stage, table in report.get("knockout", {}).items():  # masked fine-tuning measures before and after
        suffix = "" if stage == "after" else f"_{stage}"
        metrics.update({f"vqa_knockout_{c}{suffix}": scores["vqa"] for c, scores in table["zeroed"].items()})
    torch.manual_seed(0)
    model, tokenizer = load_checkpoint(str(out), device="cpu")
    world = Path(config.get("world_dir", "outputs/world"))
    image_tokens = config.get("image_tokens", "global")
    if "gates" in sweep.evaluate and model.config.gate != "none":
        metrics.update(gate_metrics(model, tokenizer, world, image_tokens, out / "gates"))
    if "knockout" in sweep.evaluate and image_tokens == "cls_patches":
        metrics.update({k: v for k, v in knockout_metrics(model, tokenizer, world).items() if k not in metrics})
    if "zero_shot" in sweep.evaluate:
        metrics.update(zero_shot_metrics(model, tokenizer, sweep.zero_shot, out))
    return metrics


def plan(sweep: Sweep, only: list[str] | None = None, jobs: int = 1) -> list[list[tuple[str, int]]]:
    """The (run, seed) pairs still to do, dealt into `jobs` lanes that can run side by side.

    Seed-major (every run's seed 0, then every run's seed 1, ...), so that a sweep stopped part-way has covered every
    run. A run that starts from another run's checkpoint (`{work_dir}/<run>/...`) follows that run in the same lane.
    """
    runs = [r for r in sweep.runs if not only or r in only]
    missing = sorted(set(only or []) - set(sweep.runs))
    if missing:
        raise ValueError(f"--only names runs not in {sweep.path}: {missing}")
    ancestry = sweep.ancestry
    by_root: dict[str, list[str]] = {}
    for run in runs:
        by_root.setdefault(ancestry(run)[-1], []).append(run)
    units = [[(run, seed) for run in sorted(unit, key=lambda r: len(ancestry(r)))
              if not sweep.result_path(run, seed).is_file()]
             for seed in sweep.seeds for unit in by_root.values()]
    lanes: list[list[tuple[str, int]]] = [[] for _ in range(jobs)]
    for unit in units:
        min(lanes, key=len).extend(unit)
    return lanes


def run_sweep(sweep: Sweep, only: list[str] | None = None, jobs: int = 1, lane: int | None = None) -> dict | None:
    """Train and evaluate what is left, in `jobs` processes side by side (each with its share of the CPU threads),
    then write the table. `lane` is one such process's share: it writes its results, not the table."""
    lanes = plan(sweep, only, jobs)
    if lane is None:
        print(f"{sweep.path}: {len(only or sweep.runs) * len(sweep.seeds)} runs, {sum(map(len, lanes))} to do",
              flush=True)
        if jobs > 1:
            run_lanes(sweep, lanes, only)
            return write_results(sweep)
    todo, failed = lanes[lane or 0], []
    for k, (run, seed) in enumerate(todo, 1):
        config = sweep.train_config(run, seed)
        out = Path(config["output_dir"])
        print(f"[{'' if lane is None else f'lane {lane}: '}{k}/{len(todo)}] {run} seed {seed} -> {out}", flush=True)
        started = time.time()
        report = out / "report" / "report.json"  # written last, so its presence means training finished
        trained_before = report.is_file()
        try:
            if not trained_before:
                train(config)
            metrics = evaluate(sweep, config)
        except Exception:  # one broken run must not stop hours of others; it is reported at the end and retried
            traceback.print_exc()
            failed.append(f"{run} seed {seed}")
            continue
        wall_time = time.time() - started
        if trained_before:  # a re-evaluation: the run's cost still includes the training an earlier sweep did
            wall_time += json.loads(report.read_text()).get("wall_time_s", 0.0)
        record = {"run": run, "seed": seed, "overrides": sweep.runs[run], "metrics": metrics,
                  "wall_time_s": round(wall_time, 1)}
        path = sweep.result_path(run, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2))
    payload = write_results(sweep) if lane is None else None
    if failed:
        raise RuntimeError(f"{len(failed)} run(s) failed (tracebacks above): {', '.join(failed)}; rerun to retry them")
    return payload


def run_lanes(sweep: Sweep, lanes: list[list[tuple[str, int]]], only: list[str] | None) -> None:
    """One `--lane k` process per lane of `plan`; each plans again from the same finished runs and takes its own."""
    # Small models leave a second core idle in one process (Python overhead, not matmuls, bounds their steps), so
    # `jobs` processes with a share of the threads each get through a grid faster than one with all of them.
    jobs = len(lanes)
    for lane in lanes:
        for run, seed in lane:
            prepare_world(sweep.train_config(run, seed))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "trainer.sweep", str(sweep.path), "--jobs", str(jobs)]
    command += ["--only", ",".join(only)] if only else []
    processes = [subprocess.Popen([*command, "--lane", str(k)], cwd=ROOT, env=env) for k in range(jobs)]
    failed = [k for k, process in enumerate(processes) if process.wait() != 0]
    if failed:
        raise RuntimeError(f"sweep lanes {failed} failed (see their output above); finished runs are kept, rerun to resume")


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
    sweep.results.mkdir(parents=True, exist_ok=True)
    (sweep.results / "results.json").write_text(json.dumps(payload, indent=2))
    (sweep.results / "results.md").write_text(results_markdown(sweep, results, curves))
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


def results_markdown(sweep: Sweep, results: dict, curves: dict | None = None) -> str:
    """The main table (every finished run, the sweep's `metrics`), then the sweep's `tables`, each a question, then
    the zero-shot learning curves if the runs have them."""
    spread = "one seed, so no std" if len(sweep.seeds) == 1 else f"mean ± std over seeds {sweep.seeds}"
    lines = [f"Generated by `python -m trainer.sweep {sweep.path}` ({spread}).", "",
             *_table(sweep, results, list(results), _columns(sweep, results))]
    for title, table in sweep.tables.items():
        lines += ["", f"### {title}", "", *_table(sweep, results, table["runs"], table["metrics"])]
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
    fig.savefig(sweep.results / "results.png", dpi=110)
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
    fig.savefig(sweep.results / "learning_curves.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m trainer.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path, help="a sweep YAML (configs/sweeps/*.yaml)")
    parser.add_argument("--only", help="comma list of runs to do now (the table still lists every finished run)")
    parser.add_argument("--table-only", action="store_true", help="rewrite the table and plots from finished runs")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs side by side, each with its share of the CPU threads (2 suits tiny models on 2 cores)")
    parser.add_argument("--lane", type=int, help=argparse.SUPPRESS)  # one of --jobs' processes
    args = parser.parse_args(argv)
    if args.jobs < 1 or (args.lane is not None and not 0 <= args.lane < args.jobs):
        parser.error(f"--jobs must be >= 1 and --lane in [0, jobs); got jobs={args.jobs}, lane={args.lane}")
    sweep = Sweep(args.sweep)
    if args.table_only:
        write_results(sweep)
    else:
        run_sweep(sweep, args.only.split(",") if args.only else None, args.jobs, args.lane)
    if args.lane is None:
        print((sweep.results / "results.md").read_text())


if __name__ == "__main__":
    main()
