"""Interventions on the image path, for the Narrow Gate analyses (arXiv 2412.06646, adapted to cross-attention).

- `knockout`: remove image tokens from the cross-attention of chosen layers. By default the post-softmax weights of
  the knocked tokens are zeroed (the others keep theirs), which is the same as zeroing those tokens' values; with
  `renormalise=True` their keys are masked, so the others' weights renormalise. Where every image token of a row is
  knocked out, that layer adds nothing from the image to the row: exactly `image_mask=False` for the layer.
- `record_image_path` / `patch_image_path`: capture the image tokens' representations of one run (the image encoder's
  output, and each layer's cross-attention keys and values) and put them into another run.

All of them live only inside their `with` block: a knockout is an `ImageKnockout` that the chosen layers apply while it
is set, and the recording and patching are PyTorch hooks on the image encoder and the key/value projections. A model
with no intervention runs its plain forward, with nothing added.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch


def backbone(model) -> torch.nn.Module:
    """The GatedGPT2Model inside a causal LM, a PEFT-wrapped one, or itself."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return getattr(model, "transformer", model)


def cross_attention_blocks(model, layers: Sequence[int] | None = None) -> dict[int, torch.nn.Module]:
    base = backbone(model)
    available = {i: block for i, block in enumerate(base.h) if block.has_cross_attention}
    if layers is None:
        return available
    missing = [i for i in layers if i not in available]
    if missing:
        raise ValueError(f"layers {missing} have no cross-attention; the model's cross-attention layers are "
                         f"{sorted(available)}.")
    return {i: available[i] for i in layers}


def _rows_for(mask: torch.Tensor, rows: int) -> torch.Tensor:
    """A (B, N) mask for `rows` rows: per-position image tokens fold the T positions of each row into the batch."""
    return mask if mask.shape[0] == rows else mask.repeat_interleave(rows // mask.shape[0], dim=0)


class ImageKnockout:
    """Image tokens one cross-attention layer may not read (set on a block by `knockout`): `tokens` is a bool (N,)
    mask, the same for every row, or (B, N)."""

    def __init__(self, tokens: torch.Tensor, renormalise: bool = False):
        self.tokens, self.renormalise = torch.as_tensor(tokens, dtype=torch.bool), renormalise

    def apply(self, image_mask: torch.Tensor, cross_attention_mask: torch.Tensor | None, num_tokens: int):
        """-> the rows that still read the image, the cross-attention mask, and the tokens whose values are zeroed
        (None when renormalising)."""
        mask = self.tokens.to(image_mask.device)
        mask = mask.expand(image_mask.shape[0], -1) if mask.dim() == 1 else mask
        if mask.shape[0] != image_mask.shape[0] or mask.shape[1] != num_tokens:
            raise ValueError(f"`knocked` has shape {tuple(self.tokens.shape)}; expected (num_image_tokens,) or "
                             f"(batch_size, num_image_tokens) = ({image_mask.shape[0]}, {num_tokens}).")
        all_knocked = mask.all(-1)
        image_mask = image_mask & ~all_knocked
        if not self.renormalise:
            return image_mask, cross_attention_mask, mask
        # rows with every token knocked are skipped above; their keys stay valid so the softmax stays finite
        keep = (~mask | all_knocked[:, None])[:, None, None, :]
        if cross_attention_mask is None:
            cross_attention_mask = keep
        elif cross_attention_mask.dtype == torch.bool:
            cross_attention_mask = cross_attention_mask & keep
        else:
            cross_attention_mask = cross_attention_mask.masked_fill(~keep, torch.finfo(cross_attention_mask.dtype).min)
        return image_mask, cross_attention_mask, None


@contextmanager
def knockout(model, knocked: torch.Tensor, layers: Sequence[int] | None = None, renormalise: bool = False
             ) -> Iterator[None]:
    """Knock out image tokens: `knocked` is a bool (N,) mask of image tokens, the same for every row, or (B, N)."""
    blocks = list(cross_attention_blocks(model, layers).values())
    previous = [block.image_knockout for block in blocks]
    for block in blocks:
        block.image_knockout = ImageKnockout(knocked, renormalise)
    try:
        yield
    finally:
        for block, before in zip(blocks, previous):
            block.image_knockout = before


@contextmanager
def record_image_path(model, layers: Sequence[int] | None = None) -> Iterator[dict]:
    """Record, for the runs inside the block, the image encoder's output (`"encoder"`) and each cross-attention
    layer's key/value projection of the image tokens (`i`: (B, N, 2D), keys then values)."""
    base = backbone(model)
    recorded: dict = {}
    handles = [base.image_encoder.register_forward_hook(lambda m, a, out: recorded.__setitem__("encoder", out))]
    for i, block in cross_attention_blocks(model, layers).items():
        handles.append(block.crossattention.c_attn.register_forward_hook(
            lambda m, a, out, i=i: recorded.__setitem__(i, out)))
    try:
        yield recorded
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def patch_image_path(model, recorded: dict, where: Sequence = ("encoder",), rows: torch.Tensor | None = None
                     ) -> Iterator[None]:
    """Replace, in the runs inside the block, the image representations named in `where` ("encoder" and/or layer
    indices) by those `recorded` from another run; `rows` (B,) bool limits the patch to some rows."""
    base = backbone(model)
    blocks = cross_attention_blocks(model, [w for w in where if w != "encoder"])
    missing = [w for w in where if w not in recorded]
    if missing:
        raise ValueError(f"nothing was recorded for {missing}; recorded: {list(recorded)}.")

    def replace(key):
        def hook(module, args, output):
            source = recorded[key].to(output.dtype)
            if source.shape[0] == 1 and source.shape[1:] == output.shape[1:]:  # one image for every row
                source = source.expand_as(output).contiguous()
            if source.shape != output.shape:
                raise ValueError(f"patching {key!r}: recorded shape {tuple(source.shape)} but this run has "
                                 f"{tuple(output.shape)}.")
            if rows is None:
                return source
            return torch.where(_rows_for(rows[:, None], output.shape[0]).to(output.device)[..., None], source, output)
        return hook

    handles = []
    if "encoder" in where:
        handles.append(base.image_encoder.register_forward_hook(replace("encoder")))
    for i, block in blocks.items():
        handles.append(block.crossattention.c_attn.register_forward_hook(replace(i)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
