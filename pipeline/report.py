"""The end-of-run report: gate values per word class on held-out captions, loss curves, and a JSON summary."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from gatedgpt2.data.run_files import RunFiles, save_figure, write_atomically, write_json  # noqa: E402
from gatedgpt2.data.world import word_class  # noqa: E402
from gatedgpt2.eval.gates import word_gates  # noqa: E402
from gatedgpt2.eval.narrow_gate import knockout_markdown  # noqa: E402
from modeling_gatedgpt import gate_per_token  # noqa: E402


@torch.no_grad()
def gate_by_word_class(model, tokenizer, captions: list[str], images: np.ndarray, batch_size: int = 64) -> dict:
    """Mean gate (over features and cross-attention layers) per word, pooled by word class.

    Words are split at whitespace, and a word's gate is the gate analysis' (`gatedgpt2.eval.gates.word_gates`: the
    mean over its BPE pieces). The gate weighs the text stream: 1 = the word ignores the image, 0 = it is replaced by
    the image.
    """
    model.eval()
    per_class = defaultdict(list)
    for start in range(0, len(captions), batch_size):
        texts = captions[start : start + batch_size]
        enc = tokenizer(texts, return_offsets_mapping=True, padding=True, return_tensors="pt")
        out = model(input_ids=enc["input_ids"].to(model.device), attention_mask=enc["attention_mask"].to(model.device),
                    image_embeds=torch.from_numpy(np.asarray(images[start : start + batch_size], dtype=np.float32)).to(
                        model.device), output_gates=True, use_cache=False)
        gates = torch.stack([gate_per_token(g) for g in out.gates]).mean(0).cpu().double().numpy()
        for b, text in enumerate(texts):
            words = [(m.group(), m.span()) for m in re.finditer(r"\S+", text)]
            real = enc["attention_mask"][b].bool().tolist()
            for (word, _), (pieces, gate) in zip(words, word_gates(gates[b], enc["offset_mapping"][b].tolist(), real,
                                                                   [span for _, span in words])):
                if pieces:
                    per_class[word_class(word)].append(float(gate))
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
