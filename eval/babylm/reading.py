"""BabyLM's reading task (de Varda et al. 2023), scored as the 2025 pipeline's `reading/run.py` scores a causal LM.

Each row of `reading_data.csv` is a word (`word`) after its context (`item`), with eye-tracking and self-paced reading
times. The word's surprisal is -log p(word | item), where p is the pipeline's `get_p2`: the probability of the word's
first token at the last position of `tokenizer(item)` (special tokens included, as the pipeline tokenizes it), times,
for a word of several tokens, the probability of each next token after the context extended with the decoded tokens
before it. The strings are the pipeline's, so are the tokens; only the batching is ours (every query of every row is
scored in one length-sorted pass instead of one forward pass per query).

The score is the gain in R^2 when surprisal joins an OLS of frequency, length and context length (with their pairwise
interactions) over the baseline's unexplained variance, in %: the mean over the four eye-tracking measures, and for
self-paced reading with the previous word's length and surprisal as spillover terms."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from gatedgpt2.data.run_files import write_atomically, write_json

from ..statistics import r_squared_gain
from .scoring import score_token_sequences

EYE_TRACKING = ("RTfirstfix", "RTfirstpass", "RTgopast", "RTrightbound")
SELF_PACED = "self_paced_reading_time"
BASELINE = ("Subtlex_log10", "length", "context_length")
SPILLOVER = ("prev_length", "prev_pred")
# every column the pipeline's reading/run.py reads (it also correlates surprisal with the ERP measures)
COLUMNS = ("item", "word", "prev_item", "prev_word", *EYE_TRACKING, SELF_PACED, "ELAN", "LAN", "N400", "P600",
           "EPNP", "PNP", *BASELINE, "prev_length")


def read_reading_data(path: str | Path):
    """The CSV as the pipeline reads it: `item` as text, a missing item read as the string "None"."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No reading data at {path} (the pipeline's reading/reading_data.csv).")
    frame = pd.read_csv(path, dtype={"item": str})
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; the file has {list(frame.columns)}.")
    frame["item"] = frame["item"].fillna("None")
    for column in ("word", "prev_word"):
        bad = [i for i, (value, context) in enumerate(zip(frame[column], frame[column.replace("word", "item")]))
               if isinstance(context, str) and not (isinstance(value, str) and value)]
        if bad:
            raise ValueError(f"{path}: line {bad[0] + 2}: column {column!r} is empty where its context is given "
                             f"({len(bad)} such rows); a word cannot be scored without its text.")
    return frame


def word_queries(tokenizer, context: str, word: str) -> list[tuple[str, int]]:
    """The (text, next token) pairs whose probabilities multiply to the pipeline's p(word | context)."""
    target = tokenizer(word, add_special_tokens=False)["input_ids"]
    if not target:
        raise ValueError(f"The word {word!r} (after {context!r:.60}) tokenizes to nothing.")
    queries = [(context, target[0])]
    if len(target) > 1:
        text = context + tokenizer.decode(target[0])
        for token in target[1:]:
            piece = tokenizer.decode(token)
            queries.append((text, tokenizer(piece, add_special_tokens=False)["input_ids"][0]))
            text += piece
    return queries


def word_surprisals(model, tokenizer, contexts: list[str], words: list[str], batch_size: int = 64,
                    desc: str | None = None) -> np.ndarray:
    """-log p(word | context) per pair, in nats, as `get_p2` computes it, all queries scored in batches."""
    per_word = [word_queries(tokenizer, context, word) for context, word in zip(contexts, words)]
    unique = list(dict.fromkeys(query for queries in per_word for query in queries))
    texts = list(dict.fromkeys(text for text, _ in unique))
    encoded = dict(zip(texts, tokenizer(texts)["input_ids"]))
    input_ids = [[*encoded[text], token] for text, token in unique]
    masks = [[0] * len(encoded[text]) + [1] for text, _ in unique]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sources = [f"reading context {t!r:.60}" for t, _ in unique]
    logp = score_token_sequences(model, input_ids, masks, pad, sources=sources, batch_size=batch_size, desc=desc)
    # the pipeline takes each probability as a float32 softmax entry and multiplies them as Python floats
    probability = dict(zip(unique, np.exp(logp).astype(np.float32).astype(np.float64)))
    return np.array([-math.log(np.prod([probability[q] for q in queries])) for queries in per_word])


def reading_scores(frame) -> dict[str, float]:
    """The pipeline's two reading scores from a frame with `pred` and `prev_pred` (surprisals)."""
    return {"eye_tracking": float(np.mean([r_squared_gain(frame, dv, BASELINE) for dv in EYE_TRACKING])),
            "self_paced_reading": r_squared_gain(frame, SELF_PACED, BASELINE + SPILLOVER)}


def evaluate_reading(model, tokenizer, data_path: str | Path, batch_size: int = 64, progress: bool = True) -> dict:
    """Surprisal of every word and of the word before it, the two scores, and the pipeline's predictions."""
    frame = read_reading_data(data_path)
    previous = [i for i, context in enumerate(frame["prev_item"]) if isinstance(context, str)]
    contexts = list(frame["item"]) + [frame["prev_item"][i] for i in previous]
    words = list(frame["word"]) + [frame["prev_word"][i] for i in previous]
    surprisal = word_surprisals(model, tokenizer, contexts, words, batch_size, desc="reading" if progress else None)
    frame["pred"] = surprisal[: len(frame)]
    prev_pred = np.full(len(frame), np.nan)
    prev_pred[previous] = surprisal[len(frame):]
    frame["prev_pred"] = prev_pred
    return {
        "dataset": Path(data_path).name,
        "metric": "R^2 gain, % of the baseline's unexplained variance",
        **reading_scores(frame),
        "items": len(frame),
        "predictions": {"reading": {"predictions": [
            {"id": index, "pred": float(row.pred), "prev_pred": float(row.prev_pred)}
            for index, row in zip(frame.index, frame.itertuples())]}},
    }


def write_reading(result: dict, folder: str | Path) -> None:
    """`predictions.json` (NaN where a word has no previous word, as the pipeline writes it) and `report.txt`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "predictions.json", result["predictions"], indent=None)
    write_atomically(folder / "report.txt", f"EYE TRACKING SCORE: {result['eye_tracking']:.2f}\n"
                                       f"SELF-PACED READING SCORE: {result['self_paced_reading']:.2f}\n")
