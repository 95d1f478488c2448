"""BabyLM's age-of-acquisition task (Chang & Bergen 2022) as the 2025 pipeline runs it (`AoA_word/`).

Each CDI word is scored in each of its contexts (`cdi_childes.json`: {word: [{"context": ...}, ...]}) at every
words-seen revision: surprisal = -sum log p over the word's tokens after `context.strip() + " "`, the pipeline's
`compute_surprisal_causal` (natural log; words of one character are skipped, as there). The leaderboard then fits a
sigmoid to each word's surprisal over log10(words seen), reads off the step where it crosses halfway between chance
and its minimum, and correlates those ages with the children's (a sigmoid over months of the CDI proportions): the
pipeline's `utils.AoAEvaluator`, whose equations `curve_fitness` follows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .scoring import score_candidates


def read_cdi_contexts(path: str | Path, min_context: int = 0) -> dict[str, list[str]]:
    """{word: contexts} of the words the pipeline's `load_eval` keeps (longer than one character, with at least
    `min_context` contexts), in file order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No AoA word file at {path} (the pipeline's full_eval/aoa/cdi_childes.json).")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: malformed JSON ({error.msg} at line {error.lineno}).") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object of words, got {type(data).__name__}.")
    words = {}
    for word, entries in data.items():
        if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("context"), str)
                                                    for e in entries):
            raise ValueError(f"{path}: word {word!r}: expected a list of {{\"context\": text}} objects.")
        if len(word) > 1 and len(entries) >= min_context:
            words[word] = [entry["context"] for entry in entries]
    return words


def word_surprisals(model, tokenizer, words: dict[str, list[str]], batch_size: int = 64,
                    desc: str | None = None) -> list[dict]:
    """One entry per (word, context): the pipeline's surprisal.json rows, without the revision's fields."""
    pairs = [(word, index, context) for word, contexts in words.items() for index, context in enumerate(contexts)]
    sentences = [context.strip() + " " + word.strip() for word, _, context in pairs]
    scores = score_candidates(model, tokenizer, sentences, [word.strip() for word, _, _ in pairs],
                              sources=[f"AoA word {word!r}, context {index}" for word, index, _ in pairs],
                              batch_size=batch_size, desc=desc)
    return [{"target_word": word, "context_id": index, "context": context, "surprisal": float(-score)}
            for (word, index, context), score in zip(pairs, scores)]


def surprisal_file(rows: list[dict], model_name: str) -> dict:
    """The pipeline's AoA_word/surprisal.json: metadata and one row per revision, word and context."""
    return {"metadata": {"model_name": model_name, "use_bos_only": False,
                         "total_steps": len({r["step"] for r in rows}),
                         "completed_steps": len({r["step"] for r in rows})},
            "results": rows}


def _sigmoid(x, a, b, c, d):
    with np.errstate(over="ignore"):  # exp overflows to inf on the optimizer's wilder steps: the sigmoid is then a + 0
        return a / (1 + np.exp(-b * (x - c))) + d


def _crossing(x, y, target: float, p0, bounds=(-np.inf, np.inf)) -> float | None:
    """Where the sigmoid fitted to (x, y) reaches `target`, or None when the fit fails or never gets there."""
    from scipy.optimize import curve_fit

    try:
        (a, b, c, d), _ = curve_fit(_sigmoid, x, y, p0=p0, bounds=bounds, maxfev=1000)
    except (RuntimeError, ValueError):
        return None
    if b <= 0 or a <= 0 or not d < target < a + d:
        return None
    return c - math.log(a / (target - d) - 1) / b


def child_aoa(ages: np.ndarray, proportions: np.ndarray) -> float | None:
    """The age (months) at which a sigmoid through the CDI proportions reaches 0.5, within the ages measured."""
    valid = ~np.isnan(proportions)
    ages, proportions = ages[valid], proportions[valid]
    if len(ages) < 3:
        return None
    age = _crossing(ages, proportions, 0.5, [1.0, 0.1, float(np.mean(ages)), 0.0],
                    ([0, 0, ages[0], -0.5], [2.0, 1.0, ages[-1], 0.5]))
    return age if age is not None and ages[0] <= age <= ages[-1] else None


def model_aoa(words_seen: np.ndarray, surprisals: np.ndarray, vocabulary: float = 300_000) -> float | None:
    """log10 of the words seen at which the word's surprisal, as a sigmoid over log10(words seen + 1), gets halfway
    from chance (log2 of `vocabulary`, the pipeline's constant) to its minimum."""
    valid = ~np.isnan(surprisals)
    steps, surprisals = words_seen[valid], surprisals[valid]
    if len(steps) < 3:
        return None
    chance = math.log2(vocabulary)
    threshold = chance - 0.5 * (chance - float(np.min(surprisals)))
    x, y = np.log10(steps + 1), -surprisals
    log_step = _crossing(x, y, -threshold, [float(np.max(y) - np.min(y)), 1.0, float(np.mean(x)), float(np.min(y))])
    if log_step is None or not steps[0] <= 10**log_step - 1 <= steps[-1]:
        return None
    return log_step


def curve_fitness(rows: list[dict], cdi) -> dict:
    """Pearson r between the model's and the children's ages of acquisition over the words both have, the
    leaderboard's AoA score. `cdi`: a frame with `word` and one column per month ("16" ... "30")."""
    from scipy.stats import pearsonr

    from gatedgpt2.data.revisions import revision_words

    months = [c for c in (str(m) for m in range(16, 31)) if c in cdi.columns]
    if not months:
        raise ValueError("The CDI table has no month columns (16 ... 30).")
    curves: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        words_seen = revision_words(str(row["step"]))
        curves.setdefault(row["target_word"], []).append((words_seen, row["surprisal"]))
    ages = np.array([int(m) for m in months], dtype=float)
    model_ages, child_ages, words = [], [], []
    for word, points in curves.items():
        match = np.flatnonzero(cdi["word"].to_numpy() == word)
        if not len(match):
            continue
        child = child_aoa(ages, cdi[months].to_numpy(float)[match[0]])
        steps, surprisals = (np.array(v, dtype=float) for v in zip(*points))
        model = model_aoa(steps, surprisals) if child is not None else None
        if model is not None:
            model_ages.append(model)
            child_ages.append(child)
            words.append(word)
    if len(words) < 3:
        return {"curve_fitness": None, "n_words": len(words)}
    r, p = pearsonr(model_ages, child_ages)
    return {"curve_fitness": float(r), "p_value": float(p), "n_words": len(words), "words": words,
            "model_aoa": model_ages, "child_aoa": child_ages}
