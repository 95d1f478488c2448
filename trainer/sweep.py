"""`python -m trainer.sweep configs/sweeps/<name>.yaml`: train a grid of runs on one budget and seeds, evaluate each,
and write one results table (Markdown + JSON) and plots.

A sweep file names a train.py config every run starts from, the settings all runs share (the budget), the seeds, the
evaluations, and the runs as train.py keys that make each one a variant:

    config: ../demo.yaml              # relative to the sweep file
    common: {num_train_epochs: 4}     # the shared budget
    seeds: [0, 1, 2]
    evaluate: [world, gates, knockout] # and/or zero_shot (with a `zero_shot:` mapping of its arguments)
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
import subprocess
import sys
import time
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
        known = {"config", "common", "seeds", "evaluate", "work_dir", "results", "runs", "zero_shot", "metrics"}
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

    def train_config(self, run: str, seed: int) -> dict:
        """The full train.py config of one (run, seed): base config, then the shared budget, then the run. String
        values may name `{seed}` and `{work_dir}`, so that a run can continue from an earlier run's checkpoint."""
        overrides = {key: value.format(seed=seed, work_dir=self.work_dir) if isinstance(value, str) else value
                     for key, value in self.runs[run].items()}
        values = {**load_yaml(self.config), **self.common, **overrides}
        values.update(seed=seed, output_dir=str(self.work_dir / run / f"seed{seed}"), report=True)
        return values

    def result_path(self, run: str, seed: int) -> Path:
        return self.results / "runs" / run / f"seed{seed}.json"


def train(config: dict) -> None:
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
    """VQA (zeroed knockout) with the CLS token, the patches or one random patch removed, and the CLS token's share of
    text-to-image attention: a narrow gate is a CLS token whose removal costs what removing the image costs."""
    from eval.images import ImageEmbeddings
    from eval.narrow_gate import attention_profile, knockout_table
    from trainer.data import load_caption_shards

    images = ImageEmbeddings.load(world / "eval" / "images" / "tokens.npy")
    table = knockout_table(model, tokenizer, world / "eval", images, tasks=("vqa",), variants=("zeroed",))["zeroed"]
    metrics = {f"vqa_knockout_{condition}": scores["vqa"] for condition, scores in table.items()}
    captions, store = load_caption_shards([world / "captions" / "dev_captions.json"],
                                          [world / "captions" / "dev_tokens.npy"])
    rows = np.arange(min(len(captions), 512))
    profile = attention_profile(model, tokenizer, [captions[i] for i in rows], store.rows(rows), rows)
    metrics["cls_attention_share"] = float(np.mean([layer["cls"] for layer in profile.values()]))
    metrics["max_image_token_share"] = float(np.mean([max(layer["cls"], layer["max_patch"])
                                                      for layer in profile.values()]))
    return metrics


def zero_shot_metrics(model, tokenizer, options: dict, out_dir: Path) -> dict:
    from eval.zero_shot import zero_shot

    tasks = options.get("tasks", "blimp,supplement")
    results = zero_shot(model, tokenizer, ROOT / options["data"], tasks.split(",") if isinstance(tasks, str) else tasks,
                        fast=options.get("fast", True), out_dir=out_dir, progress=False)
    return {name: task["accuracy"] for name, task in results["tasks"].items()}


def evaluate(sweep: Sweep, config: dict) -> dict:
    """Metrics of one trained run: its report's, then those of the evaluations the sweep lists. A LoRA run's folder
    holds an adapter, not a model; its world scores and knockout (before / after) come from its report alone."""
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
    if not (out / "config.json").is_file():
        return metrics

    torch.manual_seed(0)
    model, tokenizer = load_checkpoint(str(out), device="cpu")
    world = Path(config.get("world_dir", "outputs/world"))
    image_tokens = config.get("image_tokens", "global")
    if "gates" in sweep.evaluate and model.config.gate != "none":
        metrics.update(gate_metrics(model, tokenizer, world, image_tokens, out / "gates"))
    if "knockout" in sweep.evaluate and image_tokens == "cls_patches" and "vqa_knockout_cls" not in metrics:
        metrics.update(knockout_metrics(model, tokenizer, world))
    if "zero_shot" in sweep.evaluate:
        metrics.update(zero_shot_metrics(model, tokenizer, sweep.zero_shot, out / "zero_shot"))
    return metrics


def run_sweep(sweep: Sweep, only: list[str] | None = None) -> dict:
    runs = [r for r in sweep.runs if not only or r in only]
    missing = sorted(set(only or []) - set(sweep.runs))
    if missing:
        raise ValueError(f"--only names runs not in {sweep.path}: {missing}")
    todo = [(r, s) for r in runs for s in sweep.seeds if not sweep.result_path(r, s).is_file()]
    print(f"{sweep.path}: {len(runs) * len(sweep.seeds)} runs, {len(todo)} to do", flush=True)
    for k, (run, seed) in enumerate(todo, 1):
        config = sweep.train_config(run, seed)
        out = Path(config["output_dir"])
        print(f"[{k}/{len(todo)}] {run} seed {seed} -> {out}", flush=True)
        started = time.time()
        if not (out / "report" / "report.json").is_file():  # written last, so its presence means training finished
            train(config)
        metrics = evaluate(sweep, config)
        record = {"run": run, "seed": seed, "overrides": sweep.runs[run], "metrics": metrics,
                  "wall_time_s": round(time.time() - started, 1)}
        path = sweep.result_path(run, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2))
    return write_results(sweep)


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
    results = {}
    for run in sweep.runs:
        records = [json.loads(sweep.result_path(run, s).read_text()) for s in sweep.seeds
                   if sweep.result_path(run, s).is_file()]
        if records:
            results[run] = {"overrides": sweep.runs[run], "seeds": [r["seed"] for r in records],
                            "metrics": aggregate(records),
                            "wall_time_s": float(sum(r["wall_time_s"] for r in records))}
    sweep.results.mkdir(parents=True, exist_ok=True)
    payload = {"sweep": str(sweep.path), "config": str(sweep.config), "common": sweep.common, "seeds": sweep.seeds,
               "runs": results}
    (sweep.results / "results.json").write_text(json.dumps(payload, indent=2))
    (sweep.results / "results.md").write_text(results_markdown(sweep, results))
    plot(sweep, results)
    return payload


def _columns(sweep: Sweep, results: dict) -> list[str]:
    present = {m for r in results.values() for m in r["metrics"]}
    return [m for m in sweep.metrics if m in present] if sweep.metrics else sorted(present)


def _cell(entry: dict | None, percent_scale: bool) -> str:
    if entry is None:
        return "-"
    digits = 1 if percent_scale else 3
    return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}"


def results_markdown(sweep: Sweep, results: dict) -> str:
    columns = _columns(sweep, results)
    lines = [f"Generated by `python -m trainer.sweep {sweep.path}` (mean ± std over seeds {sweep.seeds}).", "",
             "| run | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
    for run, result in results.items():
        metrics = result["metrics"]
        cells = [_cell(metrics.get(c), c in metrics and abs(metrics[c]["mean"]) > 1.5) for c in columns]
        seeds = "" if len(result["seeds"]) == len(sweep.seeds) else f" ({len(result['seeds'])} seeds)"
        lines.append(f"| {run}{seeds} | " + " | ".join(cells) + " |")
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m trainer.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path, help="a sweep YAML (configs/sweeps/*.yaml)")
    parser.add_argument("--only", help="comma list of runs to do now (the table still lists every finished run)")
    parser.add_argument("--table-only", action="store_true", help="rewrite the table and plots from finished runs")
    args = parser.parse_args(argv)
    sweep = Sweep(args.sweep)
    if args.table_only:
        write_results(sweep)
    else:
        run_sweep(sweep, args.only.split(",") if args.only else None)
    print((sweep.results / "results.md").read_text())


if __name__ == "__main__":
    main()
