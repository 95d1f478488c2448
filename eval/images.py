"""Precomputed image embeddings keyed by the evaluation records' image ids (the images themselves live elsewhere).

Two forms: an `.npy` array of shape (N, D) or (N, P, D) (memory-mapped) with its N ids as a JSON list in
`<stem>.ids.json` or `image_ids.json` beside it; or a `datasets` folder (`save_to_disk`) with columns `image_id` and
`embedding`. Winoground records are keyed `"<image_idx>/<image_key>"` (e.g. `"0/image_1"`), VQA records by
`str(idx_in_hf_dataset)`, and records that carry an `image_id` (the grounded world's) by that."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np


class ImageEmbeddings:
    def __init__(self, embeddings: np.ndarray, ids: Sequence[str], source: str):
        if len(ids) != len(embeddings):
            raise ValueError(f"{source}: {len(ids)} image ids for {len(embeddings)} embeddings.")
        if embeddings.ndim not in (2, 3):
            raise ValueError(f"{source}: embeddings must be (N, D) or (N, P, D), got shape {embeddings.shape}.")
        self.embeddings, self.source = embeddings, source
        self.index = {str(image_id): row for row, image_id in enumerate(ids)}
        if len(self.index) != len(ids):
            raise ValueError(f"{source}: the image ids are not unique.")

    @classmethod
    def load(cls, path: str | Path) -> ImageEmbeddings:
        path = Path(path)
        if path.is_dir():
            from datasets import load_from_disk

            table = load_from_disk(str(path)).with_format("numpy")
            missing = {"image_id", "embedding"} - set(table.column_names)
            if missing:
                raise ValueError(f"{path}: a datasets folder of image embeddings needs columns 'image_id' and "
                                 f"'embedding'; missing {sorted(missing)} (has {table.column_names}).")
            return cls(np.asarray(table["embedding"], dtype=np.float32), [str(i) for i in table["image_id"]],
                       str(path))
        if path.suffix != ".npy" or not path.is_file():
            raise FileNotFoundError(f"--images must be an .npy file or a datasets folder, got {path}.")
        for ids_file in (path.with_suffix(".ids.json"), path.parent / "image_ids.json"):
            if ids_file.is_file():
                return cls(np.load(path, mmap_mode="r"), json.loads(ids_file.read_text()), str(path))
        raise FileNotFoundError(f"No image ids for {path}: expected {path.with_suffix('.ids.json').name} or "
                                f"image_ids.json beside it (a JSON list with one id per row).")

    def __len__(self) -> int:
        return len(self.embeddings)

    def rows(self, image_ids: Sequence[str], sources: Sequence[str]) -> np.ndarray:
        """Row of each id; a missing one is an error naming the id and the record that needs it."""
        rows = np.empty(len(image_ids), dtype=np.int64)
        for i, (image_id, source) in enumerate(zip(image_ids, sources)):
            if image_id not in self.index:
                raise KeyError(f"{source}: no embedding for image id {image_id!r} in {self.source} "
                               f"({len(self)} ids, e.g. {list(self.index)[:3]}).")
            rows[i] = self.index[image_id]
        return rows
