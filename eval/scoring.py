"""Candidate scores as the BabyLM 2025 pipeline computes them for a causal LM.

A candidate is a sentence and the completion at its end that is scored. The sentence is tokenised as it is (the
tokenizer's post-processor adds `[BOS]`/`[EOS]`; nothing else is prepended) and the tokens whose character span ends
after the completion's first character are the phrase; special tokens have empty spans and never count. The score is
the sum of the phrase tokens' log-probabilities, with no length normalisation. Sentences are sorted by length and
scored in right-padded batches without an attention mask: attention is causal, so a real position never sees the
padding to its right, and the result does not depend on the batch size."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm


def phrase_mask(offsets: Sequence[tuple[int, int]], sentence: str, completion: str) -> list[int]:
    """1 for the tokens that overlap the completion (the last `len(completion)` characters of `sentence`)."""
    if not sentence.endswith(completion):
        raise ValueError(f"The completion {completion!r} is not the end of the sentence {sentence!r}.")
    start = len(sentence) - len(completion) + offsets[0][0]
    return [int(end > start) for _, end in offsets]


def encode_candidates(tokenizer, sentences: Sequence[str], completions: Sequence[str]):
    """Token ids and phrase masks of each candidate."""
    if len(sentences) != len(completions):
        raise ValueError(f"{len(sentences)} sentences but {len(completions)} completions.")
    encoded = tokenizer(list(sentences), return_offsets_mapping=True)
    masks = [phrase_mask(offsets, s, c) for offsets, s, c in zip(encoded["offset_mapping"], sentences, completions)]
    return encoded["input_ids"], masks


def score_candidates(model, tokenizer, sentences: Sequence[str], completions: Sequence[str] | None = None,
                     images: np.ndarray | None = None, image_rows: Sequence[int] | None = None,
                     sources: Sequence[str] | None = None, batch_size: int = 64, desc: str | None = None) -> np.ndarray:
    """Sum of log p over each candidate's phrase tokens (float64, one per sentence).

    completions: the scored end of each sentence (default: the whole sentence).
    images, image_rows: an embedding table and the row of it each candidate is scored with (default: no image).
    sources: where each candidate comes from, named in errors (default: its index)."""
    completions = list(sentences) if completions is None else completions
    input_ids, masks = encode_candidates(tokenizer, sentences, completions)
    sources = sources if sources is not None else [f"candidate {i}" for i in range(len(input_ids))]
    sources = [f"{source}: {sentence!r}" for source, sentence in zip(sources, sentences)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return score_token_sequences(model, input_ids, masks, pad, images, image_rows, sources, batch_size, desc)


@torch.no_grad()
def score_token_sequences(model, input_ids: Sequence[Sequence[int]], masks: Sequence[Sequence[int]], pad: int,
                          images: np.ndarray | None = None, image_rows: Sequence[int] | None = None,
                          sources: Sequence[str] | None = None, batch_size: int = 64,
                          desc: str | None = None) -> np.ndarray:
    """Sum of log p(token t | tokens < t) over the tokens t a sequence's mask marks (float64, one per sequence);
    the first token is never predicted. `pad` fills batches on the right and is never read."""
    sources = sources if sources is not None else [f"sequence {i}" for i in range(len(input_ids))]
    context = model.config.max_position_embeddings
    for ids, source in zip(input_ids, sources):
        if len(ids) - 1 > context:  # the last token is only predicted
            raise ValueError(f"{source} is {len(ids)} tokens; the model reads {len(ids) - 1} of them, more than its "
                             f"context of {context} (config.max_position_embeddings).")
    if (images is None) != (image_rows is None):
        raise ValueError("Pass both `images` and `image_rows`, or neither.")
    if image_rows is not None and len(image_rows) != len(input_ids):
        raise ValueError(f"{len(image_rows)} image rows for {len(input_ids)} candidates.")

    device = model.device
    order = np.argsort([-len(ids) for ids in input_ids], kind="stable")
    scores = np.zeros(len(input_ids), dtype=np.float64)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=desc is None, leave=False):
        rows = order[start : start + batch_size]
        lengths = torch.tensor([len(input_ids[i]) for i in rows])
        tokens = torch.full((len(rows), int(lengths.max())), pad, dtype=torch.long)
        phrase = torch.zeros_like(tokens, dtype=torch.bool)
        for b, i in enumerate(rows):
            tokens[b, : lengths[b]] = torch.tensor(input_ids[i])
            phrase[b, : lengths[b]] = torch.tensor(masks[i], dtype=torch.bool)
        kwargs = {}
        if images is not None:
            batch_rows = np.asarray(image_rows)[rows]
            kwargs["image_embeds"] = torch.from_numpy(np.asarray(images[batch_rows], dtype=np.float32)).to(device)
        # Position t predicts token t + 1; the last token predicts nothing. Padding is on the right, and causal
        # attention never looks right, so real positions see no padding without an attention mask (whose absence
        # lets SDPA take its causal fast path).
        logits = model(input_ids=tokens[:, :-1].to(device), use_cache=False, **kwargs).logits.float()
        targets = tokens[:, 1:].to(device)
        logprobs = -torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        logprobs = logprobs.view(targets.shape)
        scores[rows] = (logprobs.double().cpu() * phrase[:, 1:]).sum(-1).numpy()
    return scores
