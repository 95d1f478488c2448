"""The end-of-run report: gate values per word class on held-out captions, loss curves, and a JSON summary."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from gatedgpt2.data.run_files import RunFiles, save_figure, write_atomically, write_json  # noqa: E402
from gatedgpt2.data.world import word_class  # noqa: E402
from gatedgpt2.eval.interpret.gates import read_word_gates, whitespace_words  # noqa: E402
from gatedgpt2.eval.interpret.narrow_gate import knockout_markdown  # noqa: E402


def gate_by_word_class(model, tokenizer, captions: list[str], images: np.ndarray, batch_size: int = 64) -> dict:
    """Mean gate (over features and cross-attention layers) per whitespace word, pooled by word class; a word's gate is
    the mean over its BPE pieces, as in the gate analysis (`gatedgpt2.eval.interpret.gates.read_word_gates`). The gate
    weighs the text stream: 1 = the word ignores the image, 0 = it is replaced by the image."""
    per_class = defaultdict(list)
    for gate in read_word_gates(model, tokenizer, captions, images, whitespace_words, "mean", batch_size=batch_size):
        per_class[word_class(gate.word.text)].append(float(gate.gates.mean()))
    return {c: {"mean": float(np.mean(v)), "std": float(np.std(v)), "count": len(v)}
            for c, v in sorted(per_class.items())}


def plot_losses(log_history: list[dict], path: Path) -> None:
    """Per-modality training loss (gaps where a modality was not trained, e.g. alternating epochs), the auxiliary loss
    and the per-modality validation losses, on a log scale."""
    train_logs = [e for e in log_history if "loss" in e]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in ("loss_text", "loss_captions", "contrastive_loss"):
        if any(key in e for e in train_logs):
            ax.plot([e["step"] for e in train_logs], [e.get(key, np.nan) for e in train_logs], label=key)
    for key in ("eval_text_loss", "eval_captions_loss"):
        points = [(e["step"], e[key]) for e in log_history if key in e]
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3, linestyle="--", label=key)
    ax.set(xlabel="optimizer step", ylabel="loss (nats/token)", yscale="log", title="Training and validation loss")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_gates(gates: dict, path: Path) -> None:
    classes = sorted(gates, key=lambda c: gates[c]["mean"])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(classes, [gates[c]["mean"] for c in classes],
           yerr=[gates[c]["std"] / np.sqrt(gates[c]["count"]) for c in classes], color="tab:blue", capsize=3)
    ax.set(ylabel="mean gate (1 = text only)", title="Gate per word class (held-out captions)")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def write_report(run: RunFiles, summary: dict, log_history: list[dict], gates: dict | None) -> None:
    """The run's report folder; report.json last, as the mark of a finished run."""
    plot_losses(log_history, run.report_dir / "loss_curves.png")
    if gates:
        plot_gates(gates, run.report_dir / "gate_by_word_class.png")
    if "knockout" in summary:
        write_atomically(run.report_dir / "knockout.md", "".join(
            f"{when.capitalize()} masked fine-tuning:\n\n{knockout_markdown(table)}\n"
            for when, table in summary["knockout"].items()))
    write_json(run.report, {**summary, "gate_by_word_class": gates})
