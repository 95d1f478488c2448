"""Candidate scores as the BabyLM 2025 pipeline computes them for a causal LM.

A candidate is a sentence and the completion at its end that is scored. The sentence is tokenised as it is (the
tokenizer's post-processor adds `[BOS]`/`[EOS]`; nothing else is prepended) and the tokens whose character span ends
after the completion's first character are the phrase; special tokens have empty spans and never count. The score is
the sum of the phrase tokens' log-probabilities, with no length normalisation.

How it is computed is ours, and faster than the pipeline's one padded batch of records at a time:
- a GatedGPT2 without images scores prefix trees: sequences sorted token by token are merged where they share a
  prefix, and one forward pass over a tree's nodes (each attending to its ancestors) computes every shared prefix
  once; nodes past a sequence's last scored token are not computed at all;
- only the positions whose next token is scored go through the vocabulary projection;
- when only the ranking within an item matters (the zero-shot tasks), the tokens all of its candidates share at
  their start are left out of every sum: the same log p for all, so the choice, ties and probabilities are the same;
- other models, and images, go through length-sorted right-padded batches without an attention mask (attention is
  causal, so a real position never sees the padding to its right).
None of this depends on the batch size beyond float rounding."""

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
                     images: np.ndarray | None = None, image_indices: Sequence[int] | None = None,
                     sources: Sequence[str] | None = None, batch_size: int = 64, desc: str | None = None,
                     items: Sequence[int] | None = None) -> np.ndarray:
    """Sum of log p over each candidate's phrase tokens (float64, one per sentence).

    completions: the scored end of each sentence (default: the whole sentence).
    images, image_indices: an embedding table and the row of it each candidate is scored with (default: no image).
    sources: where each candidate comes from, named in errors (default: its index).
    items: which item each candidate belongs to, when only their ranking within the item matters: the tokens all of
        an item's candidates share at their start add the same log p to each, so they are left out, and every score
        is the sum after that shared prefix. The argmax, ties and softmax over an item's candidates are unchanged."""
    completions = list(sentences) if completions is None else completions
    input_ids, masks = encode_candidates(tokenizer, sentences, completions)
    if items is not None:
        masks = without_shared_prefix(input_ids, masks, items)
    sources = sources if sources is not None else [f"candidate {i}" for i in range(len(input_ids))]
    sources = [f"{source}: {sentence!r}" for source, sentence in zip(sources, sentences)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return score_token_sequences(model, input_ids, masks, pad, images, image_indices, sources, batch_size, desc)


def without_shared_prefix(input_ids: Sequence[Sequence[int]], masks: Sequence[Sequence[int]],
                          items: Sequence[int]) -> list[list[int]]:
    """The masks with the tokens that every candidate of the same item has at the same place, from the start,
    unmarked (a token predicted from the same prefix, the same token: the same log p for all)."""
    members: dict[int, list[int]] = {}
    for index, item in enumerate(items):
        members.setdefault(item, []).append(index)
    masks = [list(m) for m in masks]
    for group in members.values():
        if len(group) < 2:
            continue
        sequences = [input_ids[i] for i in group]
        shared = 0
        while all(len(q) > shared for q in sequences) and len({q[shared] for q in sequences}) == 1:
            shared += 1
        for i in group:
            masks[i][:shared] = [0] * min(shared, len(masks[i]))
    return masks


@torch.no_grad()
def score_token_sequences(model, input_ids: Sequence[Sequence[int]], masks: Sequence[Sequence[int]], pad: int,
                          images: np.ndarray | None = None, image_indices: Sequence[int] | None = None,
                          sources: Sequence[str] | None = None, batch_size: int = 64,
                          desc: str | None = None) -> np.ndarray:
    """Sum of log p(token t | tokens < t) over the tokens t a sequence's mask marks (float64, one per sequence);
    the first token is never predicted. `pad` fills batches and is never read. A GatedGPT2 without images scores
    prefix trees (`score_as_prefix_trees`), anything else padded batches (`score_padded_batches`); the two agree to
    float rounding."""
    sources = sources if sources is not None else [f"sequence {i}" for i in range(len(input_ids))]
    context = model.config.max_position_embeddings
    for ids, source in zip(input_ids, sources):
        if len(ids) - 1 > context:  # the last token is only predicted
            raise ValueError(f"{source} is {len(ids)} tokens; the model reads {len(ids) - 1} of them, more than its "
                             f"context of {context} (config.max_position_embeddings).")
    if (images is None) != (image_indices is None):
        raise ValueError("Pass both `images` and `image_indices`, or neither.")
    if image_indices is not None and len(image_indices) != len(input_ids):
        raise ValueError(f"{len(image_indices)} image rows for {len(input_ids)} candidates.")

    if images is None and getattr(model.config, "model_type", None) == "gated_gpt2":
        scores = score_as_prefix_trees(model, input_ids, masks, pad, batch_size, desc=desc)
    else:
        scores = score_padded_batches(model, input_ids, masks, pad, images, image_indices, batch_size, desc)
    return require_finite(scores, sources)


def require_finite(scores: np.ndarray, sources: Sequence[str]) -> np.ndarray:
    """The scores, if every one is a number: a NaN compares false with everything, so an argmax would pick the first
    candidate (the correct one, in BLiMP's order) and a broken model would score 100%."""
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        shown = "; ".join(f"{sources[i]} scored {scores[i]}" for i in bad[:5])
        raise ValueError(f"{len(bad)} of {len(scores)} candidates have no finite log-probability (the model's logits "
                         f"are NaN or infinite there: diverged weights, or inputs out of range): {shown}"
                         f"{' ...' if len(bad) > 5 else ''}. Nothing was scored.")
    return scores


@torch.no_grad()
def score_padded_batches(model, input_ids: Sequence[Sequence[int]], masks: Sequence[Sequence[int]], pad: int,
                         images: np.ndarray | None = None, image_indices: Sequence[int] | None = None,
                         batch_size: int = 64, desc: str | None = None) -> np.ndarray:
    """`score_token_sequences` for any causal LM, with images: sequences sorted by length, in right-padded batches."""
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
            batch_rows = np.asarray(image_indices)[rows]
            kwargs["image_embeds"] = torch.from_numpy(np.asarray(images[batch_rows], dtype=np.float32)).to(device)
        # Position t predicts token t + 1; the last token predicts nothing. Padding is on the right, and causal
        # attention never looks right, so real positions see no padding without an attention mask (whose absence
        # lets SDPA take its causal fast path).
        targets = tokens[:, 1:].to(device)
        scored = phrase[:, 1:].to(device)
        logprobs = phrase_logprobs(model, tokens[:, :-1].to(device), targets, scored, kwargs)
        batch_scores = torch.zeros(len(rows), dtype=torch.float64, device=device)
        batch_scores.index_add_(0, scored.nonzero()[:, 0], logprobs.double())
        scores[rows] = batch_scores.cpu().numpy()
    return scores


def phrase_logprobs(model, inputs: torch.Tensor, targets: torch.Tensor, scored: torch.Tensor,
                    kwargs: dict) -> torch.Tensor:
    """log p(target) at the `scored` positions, in row-major order. A GatedGPT2 projects only those positions onto
    the vocabulary (the projection is a third of a small model's work, and the positions of a prompt or of padding
    need none); any other causal LM computes its full logits."""
    if getattr(model.config, "model_type", None) == "gated_gpt2" and model.get_output_embeddings() is not None:
        hidden = model.base_model(input_ids=inputs, use_cache=False, **kwargs).last_hidden_state[scored]
        return target_logits(model.get_output_embeddings(), hidden, targets[scored]) - vocabulary_logsumexp(
            model.get_output_embeddings(), hidden)
    logits = model(input_ids=inputs, use_cache=False, **kwargs).logits.float()
    logprobs = -torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    return logprobs.view(targets.shape)[scored]


def target_logits(head: torch.nn.Linear, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """`head(states)[i, targets[i]]` without the rest of the row, in float32."""
    logits = (states * head.weight[targets]).sum(-1)
    return (logits if head.bias is None else logits + head.bias[targets]).float()


def vocabulary_logsumexp(head: torch.nn.Linear, states: torch.Tensor, rows: int = 512,
                         columns: int = 1024) -> torch.Tensor:
    """logsumexp over the vocabulary of `head(states)`, in float32, one per state. The logits are made and reduced a
    block of `rows` x `columns` at a time, so that each block stays in cache while it is reduced: on 2 CPU cores
    this doubles the projection's throughput against one (rows, vocabulary) product (bench/babylm_pipeline.py)."""
    weight, bias = head.weight, head.bias
    out = []
    for i in range(0, len(states), rows):
        block = states[i : i + rows]
        parts = [torch.logsumexp(torch.nn.functional.linear(
                    block, weight[j : j + columns], None if bias is None else bias[j : j + columns]).float(), -1)
                 for j in range(0, weight.shape[0], columns)]
        out.append(torch.logsumexp(torch.stack(parts, -1), -1))
    return torch.cat(out) if out else states.new_zeros(0, dtype=torch.float32)


class PrefixTree:
    """Sequences merged where they share a prefix: one node per distinct prefix, in an order where a node's parent
    comes first. A node's state depends on its prefix alone, so one forward pass over the nodes, each attending to its
    ancestors at its depth's position, computes every position of every sequence, each shared prefix once."""

    def __init__(self):
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.depths: list[int] = []
        self.children: dict[tuple[int, int], int] = {}
        self.scored: list[tuple[int, int, int]] = []  # (sequence, node, target token)

    def new_nodes(self, ids: Sequence[int]) -> int:
        """How many nodes `ids` (its inputs: every token but the last) would add at most."""
        node, added = -1, 0
        for token in ids[:-1]:
            node = self.children.get((node, token), None) if added == 0 else None
            if node is None:
                added += 1
        return added

    def add(self, sequence: int, ids: Sequence[int], mask: Sequence[int]) -> None:
        """The sequence's nodes up to the last one whose next token is scored (later ones would be computed for
        nothing)."""
        last = max((t for t in range(1, len(ids)) if mask[t]), default=0)
        node = -1
        for position, token in enumerate(ids[:last]):
            child = self.children.get((node, token))
            if child is None:
                child = len(self.tokens)
                self.children[(node, token)] = child
                self.tokens.append(token)
                self.parents.append(node)
                self.depths.append(position)
            node = child
            if mask[position + 1]:
                self.scored.append((sequence, node, ids[position + 1]))

    def __len__(self) -> int:
        return len(self.tokens)

    def ancestry(self, width: int) -> np.ndarray:
        """(width, width) booleans: node i may attend to node j iff j is i or an ancestor of i; padding nodes to
        themselves."""
        allowed = np.zeros((width, width), dtype=bool)
        for node, parent in enumerate(self.parents):
            if parent >= 0:
                allowed[node] = allowed[parent]
            allowed[node, node] = True
        for node in range(len(self), width):
            allowed[node, node] = True
        return allowed


@torch.no_grad()
def score_as_prefix_trees(model, input_ids: Sequence[Sequence[int]], masks: Sequence[Sequence[int]], pad: int,
                          batch_size: int = 64, tree_size: int = 256, desc: str | None = None) -> np.ndarray:
    """`score_token_sequences` for a GatedGPT2 without images, each shared prefix computed once: sequences sorted
    token by token are packed into prefix trees of up to `tree_size` nodes (a longer sequence gets a tree of its own),
    `batch_size * 32` nodes per forward pass, and only scored nodes go through the vocabulary projection."""
    order = sorted(range(len(input_ids)), key=lambda i: input_ids[i])
    trees, tree = [], PrefixTree()
    for i in order:
        if len(tree) and len(tree) + tree.new_nodes(input_ids[i]) > tree_size:
            trees.append(tree)
            tree = PrefixTree()
        tree.add(i, input_ids[i], masks[i])
    trees.append(tree)
    trees = [t for t in trees if len(t)]

    device = model.device
    head = model.get_output_embeddings()
    scores = np.zeros(len(input_ids), dtype=np.float64)
    budget, start = batch_size * 32, 0
    progress = tqdm(total=len(trees), desc=desc, disable=desc is None, leave=False)
    while start < len(trees):
        group = [trees[start]]
        while start + len(group) < len(trees) and \
                (len(group) + 1) * max(len(t) for t in [*group, trees[start + len(group)]]) <= budget:
            group.append(trees[start + len(group)])
        start += len(group)
        width = max(len(t) for t in group)
        tokens = torch.full((len(group), width), pad, dtype=torch.long)
        positions = torch.zeros((len(group), width), dtype=torch.long)
        for row, t in enumerate(group):
            tokens[row, : len(t)] = torch.tensor(t.tokens)
            positions[row, : len(t)] = torch.tensor(t.depths)
        allowed = torch.from_numpy(np.stack([t.ancestry(width) for t in group]))[:, None]
        hidden = model.base_model(input_ids=tokens.to(device), attention_mask=allowed.to(device),
                                  position_ids=positions.to(device), use_cache=False).last_hidden_state
        sequences = [s for t in group for s, _, _ in t.scored]
        rows = torch.tensor([row for row, t in enumerate(group) for _ in t.scored], dtype=torch.long)
        nodes = torch.tensor([node for t in group for _, node, _ in t.scored], dtype=torch.long)
        targets = torch.tensor([target for t in group for _, _, target in t.scored], dtype=torch.long, device=device)
        # each distinct node's distribution once, then every target read from it
        keys, inverse = torch.unique(rows * width + nodes, return_inverse=True)
        states = hidden.reshape(-1, hidden.shape[-1])[keys.to(device)]
        normalisers = vocabulary_logsumexp(head, states)
        inverse = inverse.to(device)
        logprobs = (target_logits(head, states[inverse], targets) - normalisers[inverse]).double().cpu().numpy()
        np.add.at(scores, sequences, logprobs)
        progress.update(len(group))
    progress.close()
    return scores
