"""Precomputed image embeddings, memory-mapped: `ImageStore` (training shards, addressed by row) and `ImageEmbeddings`
(evaluation images, addressed by the records' image ids). In both, `rows(indices)` reads those rows as float32.

`ImageEmbeddings` has two forms: an `.npy` array of shape (N, D) or (N, P, D) (memory-mapped) with its N ids as a
JSON list in `<stem>.ids.json` or `image_ids.json` beside it; or a `datasets` folder (`save_to_disk`) with columns
`image_id` and `embedding`. Winoground records are keyed `"<image_idx>/<image_key>"` (e.g. `"0/image_1"`), VQA
records by `str(idx_in_hf_dataset)`, and records that carry an `image_id` (the grounded world's) by that."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# Embedding dtypes read as they are and cast to float32 per batch; anything else (integers, complex, objects) would be
# cast with a loss nobody asked for, and is refused.
EMBEDDING_DTYPES = (np.float16, np.float32, np.float64)


def open_embeddings(path: str | os.PathLike) -> np.ndarray:
    """A memory map of one `.npy` array of float embeddings; anything else is an error naming the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such embeddings file")
    if not stat.S_ISREG(path.stat().st_mode):
        raise ValueError(f"{path}: not a regular file (a FIFO, device or folder); expected an .npy array")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as error:  # noqa: BLE001 - numpy's reasons vary (truncated, corrupt, not an .npy at all)
        raise ValueError(f"{path}: not a readable .npy array ({error})") from None
    if not isinstance(array, np.ndarray):  # an .npz archive opens as a mapping of arrays
        raise ValueError(f"{path}: an .npz archive; expected one .npy array")
    if array.dtype not in EMBEDDING_DTYPES:
        raise ValueError(f"{path}: embeddings of dtype {array.dtype}; expected float16, float32 or float64")
    return array


def check_finite(array: np.ndarray, source: str, chunk_bytes: int = 1 << 26) -> None:
    """Reads `array` (a memory map) in chunks of rows and refuses NaN or Inf, naming `source` and the rows, so a
    broken shard is an error at load time and not a NaN loss many steps into training."""
    bad: list[int] = []
    step = max(1, chunk_bytes // max(1, array[:1].nbytes))
    for start in range(0, len(array), step):
        finite = np.isfinite(array[start:start + step]).reshape(min(step, len(array) - start), -1).all(axis=1)
        bad.extend((start + np.flatnonzero(~finite)).tolist())
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        rows = f"row {shown} holds" if len(bad) == 1 else f"rows {shown} hold"
        raise ValueError(f"{source}: {rows} NaN or Inf; embeddings must be finite (rows count from 0)")


class ImageStore:
    """Embedding shards concatenated in order, memory-mapped; `rows(indices)` reads only those rows as float32."""

    def __init__(self, files: Sequence[str | os.PathLike], expected_dim: int | None = None):
        if not files:
            raise ValueError("embedding_files: at least one .npy file is needed")
        self.files = [str(f) for f in files]
        self._shards = None
        shapes = []
        for f in self.files:
            shard = self._open(f)
            shape = shard.shape
            if len(shape) not in (2, 3):
                raise ValueError(f"{f}: expected embeddings of shape (N, D) or (N, P, D), got {shape}")
            if shapes and shape[1:] != shapes[0][1:]:
                raise ValueError(f"{f}: per-row shape {shape[1:]} differs from {self.files[0]}'s {shapes[0][1:]}")
            check_finite(shard, f)
            shapes.append(shape)
        if expected_dim is not None and shapes[0][-1] != expected_dim:
            raise ValueError(f"{self.files[0]}: embedding width is {shapes[0][-1]}, but the model's image_embed_dim is "
                             f"{expected_dim}")
        self.row_shape = tuple(shapes[0][1:])
        self.offsets = np.cumsum([0] + [s[0] for s in shapes])

    @classmethod
    def concatenate(cls, stores: Sequence[ImageStore]) -> ImageStore:
        """One store over the shards of `stores`, in order, without opening or scanning them again (each was checked
        when its store was made)."""
        shapes = {store.row_shape for store in stores}
        if len(shapes) != 1:
            raise ValueError(f"image stores with different row shapes {sorted(shapes)} cannot be concatenated")
        joined = cls.__new__(cls)
        joined.files = [f for store in stores for f in store.files]
        joined._shards, joined.row_shape = None, stores[0].row_shape
        joined.offsets = np.cumsum([0, *(rows for store in stores for rows in np.diff(store.offsets))])  # per shard
        return joined

    @staticmethod
    def _open(path: str) -> np.ndarray:
        return open_embeddings(path)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def rows(self, indices: Sequence[int]) -> np.ndarray:
        if self._shards is None:  # opened lazily, so a pickled store (dataloader workers) reopens its maps
            self._shards = [self._open(f) for f in self.files]
        indices = np.asarray(indices)
        shard = np.searchsorted(self.offsets, indices, side="right") - 1
        out = np.empty((len(indices), *self.row_shape), dtype=np.float32)
        for s in np.unique(shard):
            take = shard == s
            out[take] = self._shards[s][indices[take] - self.offsets[s]]
        return out

    def __getstate__(self):
        return {**self.__dict__, "_shards": None}


class ImageEmbeddings:
    def __init__(self, embeddings: np.ndarray, ids: Sequence[str], source: str):
        if len(ids) != len(embeddings):
            raise ValueError(f"{source}: {len(ids)} image ids for {len(embeddings)} embeddings.")
        if embeddings.ndim not in (2, 3):
            raise ValueError(f"{source}: embeddings must be (N, D) or (N, P, D), got shape {embeddings.shape}.")
        check_finite(embeddings, source)
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
                return cls(open_embeddings(path), json.loads(ids_file.read_text()), str(path))
        raise FileNotFoundError(f"No image ids for {path}: expected {path.with_suffix('.ids.json').name} or "
                                f"image_ids.json beside it (a JSON list with one id per row).")

    def __len__(self) -> int:
        return len(self.embeddings)

    def rows(self, indices: Sequence[int]) -> np.ndarray:
        return np.asarray(self.embeddings[np.asarray(indices)], dtype=np.float32)

    def indices(self, image_ids: Sequence[str], sources: Sequence[str]) -> np.ndarray:
        """Row index of each id; a missing one is an error naming the id and the record that needs it."""
        rows = np.empty(len(image_ids), dtype=np.int64)
        for i, (image_id, source) in enumerate(zip(image_ids, sources)):
            if image_id not in self.index:
                raise KeyError(f"{source}: no embedding for image id {image_id!r} in {self.source} "
                               f"({len(self)} ids, e.g. {list(self.index)[:3]}).")
            rows[i] = self.index[image_id]
        return rows
