"""The collator: right-padded batches with -100 labels on padding and each row's image embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .images import ImageStore


@dataclass
class GroundedCollator:
    """Right-pads a batch, sets labels to -100 on padding, and attaches the rows' image embeddings.

    Batches without any image row carry no image arguments at all (the model then runs text-only); mixed batches
    carry zeros for text rows and an `image_mask` saying which rows have an image.

    It checks each batch once, on the host, for what the model would otherwise check on every forward (a device
    sync each): a row longer than the model's `max_length` (its n_positions). A batch with nothing to predict is no
    error under the Trainer, which divides by the tokens of all its accumulated batches.
    Image rows come from an ImageStore, which checked its shards for NaN/Inf when it opened them.
    """

    pad_token_id: int
    images: ImageStore | None = None
    max_length: int | None = None
    input_columns = ("input_ids", "image_index")

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        length = max(len(r["input_ids"]) for r in rows)
        if self.max_length is not None and length > self.max_length:
            raise ValueError(f"a batch row has {length} tokens, more than the model's n_positions "
                             f"({self.max_length})")
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r["input_ids"])] = torch.as_tensor(r["input_ids"])
            attention_mask[i, : len(r["input_ids"])] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask,
                 "labels": input_ids.masked_fill(attention_mask == 0, -100)}
        image_index = np.array([r.get("image_index", -1) for r in rows])
        has_image = image_index >= 0
        if has_image.any():
            if self.images is None:
                raise ValueError("a batch has image rows (image_index >= 0) but the collator has no ImageStore")
            embeds = np.zeros((len(rows), *self.images.row_shape), dtype=np.float32)
            embeds[has_image] = self.images.rows(image_index[has_image])
            batch["image_embeds"] = torch.from_numpy(embeds)
            batch["image_mask"] = torch.from_numpy(has_image)
        return batch
