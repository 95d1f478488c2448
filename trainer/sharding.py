"""The sharding rule: in a run whose parameters are sharded across processes (FSDP, DeepSpeed), at each micro-batch
either every process runs the image path or none does.

Why: a text-only batch (the collator gives it no image arguments) leaves the image encoder, the cross-attention, the
gates and the contrastive head without a gradient. FSDP2 then reduce-scatters fewer gradients on that process than
on one whose batch has an image: gloo aborts with a collective mismatch, NCCL hangs or mixes up gradients. DeepSpeed
ZeRO-3 gathers each module's parameters when the module runs, so a process that skips the image path diverges already
in the forward pass. So when any process has an image row, the others run the image path on zero placeholder images
with `image_mask` all False: the model gives those rows exactly the text-only result and the image parameters a zero
gradient, which sums to what one process computes on the whole batch. When no process has one, all skip it alike, and
the image parameters get no gradient at all, as in one process (AdamW then leaves them and their moments untouched).
Data parallelism (DDP) replicates the parameters and needs none of this (`ddp_find_unused_parameters`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def any_process_has_images(batch: dict) -> bool:
    """Whether the micro-batch of any process carries image arguments (one all-reduce of a flag)."""
    flag = torch.tensor(int("image_embeds" in batch), device=batch["input_ids"].device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag)


def with_placeholder_images(batch: dict, row_shape: tuple[int, ...], any_process_has_images: bool) -> dict:
    """`batch` with zero images and an all-False `image_mask` if it has none but another process's batch has one."""
    if "image_embeds" in batch or not any_process_has_images:
        return batch
    rows, device = batch["input_ids"].shape[0], batch["input_ids"].device
    return {**batch, "image_embeds": torch.zeros((rows, *row_shape), device=device),
            "image_mask": torch.zeros(rows, dtype=torch.bool, device=device)}
