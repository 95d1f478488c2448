"""What the gate tracks, measured against nulls: the gate at a word next to what the image does for the next word.

The gate at position t mixes the image into the state that predicts token t + 1, so a gate pattern by word class can
come from what follows each class rather than from the word. Here, per word occurrence of held-out captions (words
split at whitespace):

- its gate: at its last piece (the position that predicts the next word), pooled over layers and features;
- the image's benefit to it: the summed loss of its pieces without the image (`image_mask` false: the exact text-only
  computation) minus with it, in nats.

Statistics, each with a confidence interval from resampling captions (the occurrences within a caption are not
independent) and percentiles in two nulls:

- `within_word_gap`: for words that occur both before an image-dependent word and before an image-independent one,
  the mean over word types of the gate difference between the two: the same word, differing only in what follows;
- `next_word_correlation`: Spearman's rho between 1 - gate at a word and the image's benefit to the next word;
- `class_effect`: Kruskal-Wallis epsilon^2 of the gate across word classes;
- null (a), `untrained_gates`: the same trained model with its gates drawn afresh from their initialisation, which
  vary with the hidden state as much as a trained gate can but were never trained to let the image in;
- null (b), `shuffled_within_words`: each word's gates shuffled among its own occurrences (keeps what the word is,
  breaks the link to its context).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from gatedgpt2.data.run_files import write_json
from modeling_gatedgpt.gating import GATE_CLASSES

from ..statistics import caption_bootstrap, epsilon_squared, percentile_in, shuffled_within_words, spearman
from .gates import read_word_gates, whitespace_words


def word_gates_and_benefits(model, tokenizer, captions: Sequence[str], images, batch_size: int = 64,
                            benefits: bool = True) -> list[dict]:
    """One row per whitespace word of each caption: caption, index, word, gate (pooled over layers, at the word's
    last piece: the gate that feeds the next word's prediction) and, with `benefits`, the image's benefit to the word
    (nats summed over its pieces; NaN for a caption's first piece, which nothing predicts)."""
    return [{"caption": g.caption, "index": g.index, "word": g.word.text.lower(), "gate": float(g.gates.mean()),
             "benefit": g.benefit}
            for g in read_word_gates(model, tokenizer, captions, images, whitespace_words, "last",
                                     image_benefit=benefits, batch_size=batch_size)]


def next_word_pairs(rows: list[dict]) -> dict[str, np.ndarray]:
    """Each word with the word after it in its caption: arrays caption, word (of the first), gate (of the first) and
    next_benefit (the image's benefit to the second), and the positions of both in `rows`."""
    first = [i for i in range(len(rows) - 1)
             if rows[i + 1]["caption"] == rows[i]["caption"] and rows[i + 1]["index"] == rows[i]["index"] + 1]
    return {"row": np.array(first), "next_row": np.array(first) + 1,
            "caption": np.array([rows[i]["caption"] for i in first]),
            "word": np.array([rows[i]["word"] for i in first]),
            "gate": np.array([rows[i]["gate"] for i in first]),
            "next_benefit": np.array([rows[i + 1]["benefit"] for i in first])}


# ------------------------------------------------------------------------------------------------ within-word gap


class WordGap(NamedTuple):
    difference: float  # the word's mean gate before an image-dependent word minus before an image-independent one
    n_dependent: int
    n_independent: int


def within_word_gap(gates: np.ndarray, words: Sequence[str], next_dependent: np.ndarray,
                    min_count: int = 5) -> tuple[float | None, dict[str, WordGap]]:
    """Mean over word types of (mean gate before an image-dependent word - mean gate before an image-independent
    one), over the types with at least `min_count` occurrences of each; (the gap, each type's `WordGap`)."""
    words = np.asarray(words)
    per_type = {}
    for word in np.unique(words):
        mine = words == word
        dependent, independent = gates[mine & next_dependent], gates[mine & ~next_dependent]
        if len(dependent) >= min_count and len(independent) >= min_count:
            per_type[str(word)] = WordGap(float(dependent.mean() - independent.mean()), len(dependent),
                                          len(independent))
    if not per_type:
        return None, per_type
    return float(np.mean([g.difference for g in per_type.values()])), per_type


# ------------------------------------------------------------------------------------------------ untrained null


@contextlib.contextmanager
def untrained_gates(model, seed: int) -> Iterator[None]:
    """The model with every gate replaced by a fresh one, initialised as the model initialises gates (seeded, without
    touching the caller's random state); the trained gates come back on exit."""
    blocks = [block for block in model.transformer.h if getattr(block, "gate", None) is not None]
    trained = [block.gate for block in blocks]
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for block in blocks:
                fresh = GATE_CLASSES[model.config.gate](model.config).to(device=model.device, dtype=model.dtype)
                fresh.apply(model._init_weights)
                block.gate = fresh.eval()
        yield
    finally:
        for block, gate in zip(blocks, trained):
            block.gate = gate


# ------------------------------------------------------------------------------------------------ the analysis


def gate_controls(model, tokenizer, captions: Sequence[str], images,
                  groupings: dict[str, Callable[[str], str | None]], dependent: Callable[[str], bool] | None = None,
                  untrained_draws: int = 20, permutations: int = 200, resamples: int = 1000, batch_size: int = 64,
                  min_count: int = 5, seed: int = 0) -> dict:
    """For each grouping of words into classes (`groupings[name](word)`; None leaves a word out), per class: the
    next-word correlation and, with `dependent(word)` (is the next word decided by the image?), the within-word gap,
    each with its caption-bootstrap CI and its percentile in both nulls; and the gate's class effect (epsilon^2)
    against the untrained null. The model runs once per null draw, whatever the number of groupings."""
    rows = word_gates_and_benefits(model, tokenizer, captions, images, batch_size)
    pairs = next_word_pairs(rows)
    next_dependent = (np.array([dependent(rows[i]["word"]) for i in pairs["next_row"]]) if dependent
                      else None)
    untrained = []
    for draw in range(untrained_draws):
        with untrained_gates(model, seed + draw):
            fresh = word_gates_and_benefits(model, tokenizer, captions, images, batch_size, benefits=False)
        untrained.append(np.array([fresh[i]["gate"] for i in pairs["row"]]))
    generator = np.random.default_rng(seed)
    shuffled = [shuffled_within_words(pairs["gate"], pairs["word"], generator) for _ in range(permutations)]
    nulls = {"untrained": untrained, "shuffled_within_words": shuffled}
    return {name: _grouped_report(pairs, np.array([classes(w) or "" for w in pairs["word"]]), next_dependent, nulls,
                                  len(captions), resamples, min_count, seed)
            for name, classes in groupings.items()}


def _grouped_report(pairs: dict, labels: np.ndarray, next_dependent: np.ndarray | None, nulls: dict, captions: int,
                    resamples: int, min_count: int, seed: int) -> dict:
    keep = labels != ""

    def class_effect(gates):
        return epsilon_squared(gates[keep], labels[keep])

    observed_effect = class_effect(pairs["gate"])
    untrained_effect = (percentile_in(observed_effect, [class_effect(g) for g in nulls["untrained"]])
                        if observed_effect is not None and nulls["untrained"] else None)
    report = {"occurrences": int(keep.sum()), "captions": captions, "mean_gate": float(pairs["gate"][keep].mean()),
              "class_effect": {"epsilon_squared": observed_effect, "untrained": untrained_effect},
              "classes": {}}
    for name in sorted(set(labels[keep])):
        mine = np.flatnonzero(labels == name)
        entry = {"n": int(len(mine)), "mean_gate": float(pairs["gate"][mine].mean())}

        def rho(gates, subset=slice(None)):
            chosen = mine[subset]
            return spearman(1 - gates[chosen], pairs["next_benefit"][chosen])["rho"]

        observed = rho(pairs["gate"])
        entry["next_word_rho"] = {
            "rho": observed,
            "ci95": caption_bootstrap(pairs["caption"][mine], lambda s: rho(pairs["gate"], s), resamples, seed),
            **{null: percentile_in(observed, [rho(g) or 0.0 for g in draws]) if observed is not None and draws
               else None for null, draws in nulls.items()}}
        if next_dependent is not None:
            words, before = pairs["word"][mine], next_dependent[mine]

            def gap(gates, subset=slice(None)):
                return within_word_gap(gates[mine][subset], words[subset], before[subset], min_count)[0]

            observed, per_type = within_word_gap(pairs["gate"][mine], words, before, min_count)
            entry["within_word_gap"] = {
                "gap": observed, "types": {w: g._asdict() for w, g in per_type.items()},
                "ci95": caption_bootstrap(pairs["caption"][mine], lambda s: gap(pairs["gate"], s), resamples, seed)
                if observed is not None else None,
                # two-sided: the size of the gap, whichever its sign, against the nulls' sizes
                **{null: percentile_in(abs(observed), [abs(gap(g) or 0.0) for g in draws])
                   if observed is not None and draws else None for null, draws in nulls.items()}}
            entry["mean_gate_before"] = {
                "dependent": float(pairs["gate"][mine][before].mean()) if before.any() else None,
                "independent": float(pairs["gate"][mine][~before].mean()) if (~before).any() else None}
            entry["next_benefit"] = {
                "before_dependent": float(np.nanmean(pairs["next_benefit"][mine][before])) if before.any() else None,
                "before_independent": float(np.nanmean(pairs["next_benefit"][mine][~before]))
                if (~before).any() else None}
        report["classes"][name] = entry
    return report


def write_report(report: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "gate_controls.json"
    write_json(path, report)
    return path
