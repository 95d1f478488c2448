"""A whole BabyLM 2025 submission's zero-shot scoring of one training run, in the pipeline's results tree.

Every words-seen revision (`<run>/revisions/chck_*`) gets the fast suite, and the final model (`<run>`, the
pipeline's `main`) the full one; with the CDI word file, every revision's AoA surprisals go into `main`'s
`AoA_word/surprisal.json`. What is already scored is skipped: a revision's suite counts as scored when its
`scores.json` (written last, after every prediction file) is there, its AoA when its `aoa_surprisal.json` is; the
checkpoint is loaded only for what is missing. The summary is a Markdown table and a PNG of each task's
learning curve, beside the tree: `<results>/<model>/summary.md`, `learning_curves.png`."""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from gatedgpt2.data.run_files import RunFiles, save_figure, write_atomically, write_json

from ..checkpoint import load_checkpoint
from .aoa import curve_fitness, read_cdi_contexts, surprisal_file, word_surprisals
from .zero_shot import scoring_of, write_pipeline_tree, zero_shot

SCORES = "scores.json"  # ours, beside the pipeline's zero_shot/ folder: the revision's scores, written last
AOA_ROWS = "aoa_surprisal.json"  # ours: the revision's AoA rows, gathered into main's AoA_word/surprisal.json


def score_revision(model, tokenizer, checkpoint: Path, revision: str, suite: str, data_dir: Path, model_dir: Path,
                   batch_size: int) -> dict:
    """Score one checkpoint on a suite, write its predictions in the pipeline's tree and then its scores.json."""
    results = zero_shot(model, tokenizer, data_dir, suite, fast=suite == "fast", batch_size=batch_size,
                        progress=False, model_name=str(checkpoint))
    write_pipeline_tree(results, model_dir.parent, model_dir.name, revision)
    scores = {name: scoring_of(name).scores(r) for name, r in results["tasks"].items()}
    write_json(model_dir / revision / SCORES, {"suite": suite, "tasks": scores})
    return scores


def score_run(run_dir: str | Path, data_dir: str | Path, results_dir: str | Path, model_name: str | None = None,
              cdi_words: str | Path | None = None, cdi_table: str | Path | None = None, batch_size: int = 64,
              progress: bool = True) -> dict:
    """Score every revision (fast suite) and the final model (full suite) of a run that are not yet scored; gather
    the AoA surprisals; write the summary. Returns {revision: {"words": N, "suite": ..., "tasks": scores}}."""
    run_dir, data_dir = Path(run_dir), Path(data_dir)
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir} holds no final model (config.json); pass a training run's output folder.")
    model_dir = Path(results_dir) / Path(model_name or run_dir.resolve().name).stem
    words = read_cdi_contexts(cdi_words) if cdi_words else None
    run = RunFiles(run_dir)
    plan = [(n, folder, folder.name, "fast") for n, folder in run.revisions()] + [(run.final_words_seen(), run_dir,
                                                                                   "main", "full")]
    summary = {}
    bar = tqdm(plan, desc="BabyLM revisions", unit="checkpoint", disable=not progress)
    for n, folder, revision, suite in bar:
        bar.set_postfix_str(revision)
        done = model_dir / revision / SCORES
        saved = json.loads(done.read_text()) if done.is_file() else None
        scores = saved["tasks"] if saved is not None and saved["suite"] == suite else None
        needs_aoa = words is not None and revision != "main" and not (model_dir / revision / AOA_ROWS).is_file()
        if scores is None or needs_aoa:  # one load serves whichever of the two is missing
            model, tokenizer = load_checkpoint(str(folder))
            if scores is None:
                scores = score_revision(model, tokenizer, folder, revision, suite, data_dir, model_dir, batch_size)
            if needs_aoa:
                write_json(model_dir / revision / AOA_ROWS, word_surprisals(model, tokenizer, words, batch_size))
        summary[revision] = {"words": n, "suite": suite, "tasks": scores}
    if words is not None:
        rows = [{"step": revision, "word_count": entry["words"], **row}
                for revision, entry in summary.items() if revision != "main"
                for row in json.loads((model_dir / revision / AOA_ROWS).read_text())]
        write_json(model_dir / "main" / "zero_shot" / "causal" / "AoA_word" / "surprisal.json",
                    surprisal_file(rows, str(run_dir)))
        if cdi_table:
            import pandas as pd

            summary["aoa"] = curve_fitness(rows, pd.read_csv(cdi_table))
    write_summary(summary, model_dir)
    return summary


def write_summary(summary: dict, model_dir: Path) -> None:
    """summary.md (a row per checkpoint, a column per task, exact ties beside each score) and learning_curves.png."""
    checkpoints = {k: v for k, v in summary.items() if k != "aoa"}
    tasks = list(dict.fromkeys(t for entry in checkpoints.values() for t in entry["tasks"]))
    lines = ["| checkpoint | words | suite | " + " | ".join(tasks) + " |",
             "| --- | ---: | --- | " + " | ".join("---:" for _ in tasks) + " |"]
    for revision, entry in checkpoints.items():
        cells = []
        for task in tasks:
            scores = entry["tasks"].get(task)
            if scores is None:
                cells.append("-")
            else:
                ties = f" ({scores['exact_ties']} ties)" if "exact_ties" in scores else ""
                cells.append(scoring_of(task).format(scores) + ties)
        words = f"{entry['words']:,}" if entry["words"] is not None else "?"
        lines.append(f"| {revision} | {words} | {entry['suite']} | " + " | ".join(cells) + " |")
    notes = ["", "Scores: accuracy in % (entity tracking: mean over its splits), Spearman's rho for the WUG tasks, "
             "R^2 gain in % for reading (eye tracking / self-paced reading). Ties: items whose best score is shared; "
             "the pipeline counts them right."]
    if "aoa" in summary:
        aoa = summary["aoa"]
        fitness = ("undefined (fewer than 3 words fit)" if aoa["curve_fitness"] is None
                   else f"{aoa['curve_fitness']:.3f} (p = {aoa['p_value']:.3g})")
        notes.append(f"AoA curve fitness (Pearson r, model vs child age of acquisition): {fitness} over "
                     f"{aoa['n_words']} words.")
    write_atomically(model_dir / "summary.md", "\n".join(lines + notes) + "\n")
    write_json(model_dir / "summary.json", summary)
    plot_learning_curves(checkpoints, tasks, model_dir / "learning_curves.png")


def plot_learning_curves(checkpoints: dict, tasks: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    columns = min(4, len(tasks))
    rows = -(-len(tasks) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.8 * rows), squeeze=False)
    for axis, task in zip(axes.flat, tasks):
        points = [(entry["words"], scoring_of(task).headline(entry["tasks"][task]), entry["suite"])
                  for entry in checkpoints.values() if task in entry["tasks"] and entry["words"]]
        fast = [(w, s) for w, s, suite in points if suite == "fast"]
        if fast:
            axis.plot(*zip(*fast), marker="o", markersize=3, label="revisions (fast)")
        for w, s, suite in points:
            if suite == "full":
                axis.plot([w], [s], marker="*", markersize=10, color="C3", linestyle="", label="final (full)")
        axis.set_xscale("log")
        axis.xaxis.set_minor_formatter(NullFormatter())
        unit = scoring_of(task).unit
        axis.set_title(f"{task} ({unit})", fontsize=9)
        axis.set_xlabel("words seen", fontsize=8)
        axis.tick_params(labelsize=7)
    for axis in list(axes.flat)[len(tasks):]:
        axis.axis("off")
    axes.flat[0].legend(fontsize=7)
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)
