"""Log-probability scoring as the BabyLM pipeline does it: the score of a text is the sum of the log-probabilities of
its tokens (no length normalisation); a completion is scored by the tokens that cover its characters after a context.
Batches are right-padded with an attention mask and grouped by length; with images, each text has its own."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


@torch.no_grad()
def _score(model, encodings: list[list[int]], weights: list[list[float]], images: np.ndarray | None, use_image: bool,
           batch_size: int, pad_token_id: int, desc: str | None) -> np.ndarray:
    device = model.device
    order = np.argsort([-len(e) for e in encodings], kind="stable")
    scores = np.zeros(len(encodings), dtype=np.float64)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=desc is None, leave=False):
        rows = order[start : start + batch_size]
        length = max(len(encodings[i]) for i in rows)
        input_ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
        token_weights = torch.zeros((len(rows), length), dtype=torch.float64)
        for b, i in enumerate(rows):
            input_ids[b, : len(encodings[i])] = torch.tensor(encodings[i])
            token_weights[b, : len(weights[i])] = torch.tensor(weights[i], dtype=torch.float64)
        attention_mask = (torch.arange(length) < torch.tensor([len(encodings[i]) for i in rows])[:, None]).long()
        kwargs = {}
        if images is not None:
            kwargs["image_embeds"] = torch.from_numpy(np.asarray(images[rows], dtype=np.float32)).to(device)
            kwargs["image_mask"] = torch.full((len(rows),), use_image, dtype=torch.bool, device=device)
        logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False,
                       **kwargs).logits
        logprobs = F.log_softmax(logits[:, :-1].double(), dim=-1).gather(-1, input_ids[:, 1:, None].to(device))[..., 0]
        scores[rows] = (logprobs.cpu() * token_weights[:, 1:]).sum(-1).numpy()
    return scores


def sentence_scores(model, tokenizer, texts: Sequence[str], images: np.ndarray | None = None, use_image: bool = True,
                    batch_size: int = 64, desc: str | None = None) -> np.ndarray:
    """Sum of log p over every token after the first ([BOS]) of each text."""
    encodings = tokenizer(list(texts))["input_ids"]
    weights = [[1.0] * len(e) for e in encodings]
    return _score(model, encodings, weights, images, use_image, batch_size, tokenizer.pad_token_id, desc)


def completion_scores(model, tokenizer, contexts: Sequence[str], completions: Sequence[str],
                      images: np.ndarray | None = None, use_image: bool = True, batch_size: int = 64,
                      desc: str | None = None) -> np.ndarray:
    """Sum of log p over the tokens of `context + completion` that start inside the completion (special tokens
    excluded)."""
    full = [c + x for c, x in zip(contexts, completions)]
    encoded = tokenizer(full, return_offsets_mapping=True, return_special_tokens_mask=True)
    weights = []
    for context, offsets, special in zip(contexts, encoded["offset_mapping"], encoded["special_tokens_mask"]):
        weights.append([float(not s and start >= len(context.rstrip()) and end > start)
                        for (start, end), s in zip(offsets, special)])
    return _score(model, encoded["input_ids"], weights, images, use_image, batch_size, tokenizer.pad_token_id, desc)
