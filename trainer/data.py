"""Data in the BabyLM formats: text directories, image-caption shards, the tokenizer, and the collator.

- Text: `*.train` files, one utterance per line; whitespace is collapsed and empty lines dropped. Each line is one
  example (the paper) or lines are packed into full blocks. A line longer than the context is split into consecutive
  blocks, never cut.
- Image-caption: caption files (a JSON list of strings, or JSONL of strings / {"caption": ...}) aligned row by row with
  `.npy` embedding shards of shape (N, D) or (N, P, D), shards concatenated in the order given. Embeddings stay
  memory-mapped; a batch reads only its rows.
- Examples carry `input_ids`, `image_index` (-1 for text) and `num_words` (the whitespace words of the source lines,
  a long line's words shared among its blocks in proportion to their tokens), and are cached on disk through
  `datasets` under a key of their sources, the tokenizer and `EXAMPLES_FORMAT`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
import transformers
from transformers import AutoTokenizer

BOS, EOS, PAD = "[BOS]", "[EOS]", "[PAD]"
EXAMPLES_FORMAT = 2  # part of the cache key: bump it when tokenize_examples changes what an example holds


def clean_line(line: str) -> str:
    return " ".join(line.split())


def text_files(directory: str | os.PathLike, pattern: str = "*.train") -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"text_dir: {directory} is not a directory")
    files = sorted(directory.glob(pattern))
    if not files:
        raise ValueError(f"text_dir: {directory} has no files matching {pattern!r}")
    return files


def iter_text_lines(files: Iterable[Path]) -> Iterator[str]:
    for path in files:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line := clean_line(line):
                    yield line


def text_rows(files: list[str]) -> Iterator[dict]:
    """`datasets.Dataset.from_generator` source: one {"text": line} per cleaned, non-empty line."""
    for line in iter_text_lines(Path(f) for f in files):
        yield {"text": line}


def read_captions(path: str | os.PathLike) -> list[str]:
    """A JSON list of strings, or JSONL with one string or {"caption": str} per line; errors say file:line."""
    path = Path(path)
    if path.suffix == ".jsonl":
        captions = []
        with open(path, encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{lineno}: malformed JSON ({err.msg} at column {err.colno})") from None
                caption = record.get("caption") if isinstance(record, dict) else record
                if not isinstance(caption, str):
                    raise ValueError(f"{path}:{lineno}: expected a string or {{\"caption\": str}}, got {line.strip()[:80]}")
                captions.append(caption)
        return captions
    text = path.read_text(encoding="utf-8")
    try:
        captions = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: malformed JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        raise ValueError(f"{path}: expected a JSON list of caption strings")
    return captions


class ImageStore:
    """Embedding shards concatenated in order, memory-mapped; `rows(indices)` reads only those rows as float32."""

    def __init__(self, files: Sequence[str | os.PathLike], expected_dim: int | None = None):
        if not files:
            raise ValueError("embedding_files: at least one .npy file is needed")
        self.files = [str(f) for f in files]
        self._shards = None
        shapes = [self._open(f).shape for f in self.files]
        for f, shape in zip(self.files, shapes):
            if len(shape) not in (2, 3):
                raise ValueError(f"{f}: expected embeddings of shape (N, D) or (N, P, D), got {shape}")
            if shape[1:] != shapes[0][1:]:
                raise ValueError(f"{f}: per-row shape {shape[1:]} differs from {self.files[0]}'s {shapes[0][1:]}")
        if expected_dim is not None and shapes[0][-1] != expected_dim:
            raise ValueError(f"{self.files[0]}: embedding width is {shapes[0][-1]}, but the model's image_embed_dim is "
                             f"{expected_dim}")
        self.row_shape = tuple(shapes[0][1:])
        self.offsets = np.cumsum([0] + [s[0] for s in shapes])

    @staticmethod
    def _open(path: str) -> np.ndarray:
        return np.load(path, mmap_mode="r")

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


def load_caption_shards(caption_files: Sequence[str], embedding_files: Sequence[str],
                        expected_dim: int | None = None) -> tuple[list[str], ImageStore]:
    captions = [c for f in caption_files for c in read_captions(f)]
    store = ImageStore(embedding_files, expected_dim)
    if len(captions) != len(store):
        raise ValueError(f"caption_files {list(caption_files)} hold {len(captions)} captions but embedding_files "
                         f"{store.files} hold {len(store)} embeddings; they must align row by row")
    return captions, store


# --------------------------------------------------------------------------------------------------- tokenizer


class PreTrainedTokenizerFast(transformers.PreTrainedTokenizerFast):
    """transformers' fast tokenizer, saved under the class name every release knows. transformers 5.x writes its own
    name for it, `TokenizersBackend`, into tokenizer_config.json, which 4.x (the BabyLM pipeline's 4.51.3) cannot
    load; this subclass is saved as `PreTrainedTokenizerFast`, which both load as their fast tokenizer."""


def portable_tokenizer(tokenizer):
    """`tokenizer`, saving under a class name that transformers 4.x loads too (see `PreTrainedTokenizerFast`)."""
    if type(tokenizer) is transformers.PreTrainedTokenizerFast:
        tokenizer.__class__ = PreTrainedTokenizerFast
    return tokenizer


def train_tokenizer(lines: Iterable[str], vocab_size: int, model_max_length: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `lines`; `[BOS] $A [EOS]` around every text, `[PAD]` for padding."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    bpe = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, EOS, PAD], show_progress=False,
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(lines, bpe)
    bos, eos = tokenizer.token_to_id(BOS), tokenizer.token_to_id(EOS)
    tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=True),
        processors.TemplateProcessing(single=f"{BOS} $A {EOS}", pair=f"{BOS} $A {EOS} $B:1 {EOS}:1",
                                      special_tokens=[(BOS, bos), (EOS, eos)]),
    ])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   model_max_length=model_max_length)


def load_tokenizer(path: str) -> PreTrainedTokenizerFast:
    tokenizer = portable_tokenizer(AutoTokenizer.from_pretrained(path))
    if not tokenizer.is_fast:
        raise ValueError(f"tokenizer_name: {path} is not a fast tokenizer (offsets are needed for the gate analysis)")
    if tokenizer.pad_token is None:
        raise ValueError(f"tokenizer_name: {path} has no pad token")
    return tokenizer


def _tokenizer_key(tokenizer: PreTrainedTokenizerFast) -> str:
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------- examples


def _blocks(ids: list[int], block_size: int) -> list[list[int]]:
    return [ids[i : i + block_size] for i in range(0, len(ids), block_size)]


def _words_per_token(num_words: int, num_tokens: int) -> np.ndarray:
    """A line's words spread over its tokens (integers summing to `num_words`), so that every block of a long line
    counts its share: a BabyLM file can be one line of 600K words, and words seen must grow as its blocks are read."""
    return np.diff(np.round(num_words * np.arange(num_tokens + 1) / max(num_tokens, 1))).astype(np.int64)


def _words_per_block(words_per_token: np.ndarray, block_size: int) -> list[int]:
    if len(words_per_token) == 0:
        return []
    return np.add.reduceat(words_per_token, np.arange(0, len(words_per_token), block_size)).tolist()


def tokenize_examples(batch: dict, tokenizer, block_size: int, packing: bool) -> dict:
    """Batched `datasets.map` function: text (+ image_index) -> blocks of at most `block_size` tokens."""
    encoded = tokenizer(batch["text"], add_special_tokens=True, verbose=False)["input_ids"]  # long lines are split below
    image_index = batch.get("image_index", [-1] * len(encoded))
    words = [_words_per_token(len(text.split()), len(ids)) for text, ids in zip(batch["text"], encoded)]
    if packing:
        blocks = _blocks([token for ids in encoded for token in ids], block_size)
        return {"input_ids": blocks, "image_index": [-1] * len(blocks),
                "num_words": _words_per_block(np.concatenate(words), block_size)}
    out = {"input_ids": [], "image_index": [], "num_words": []}
    for ids, image, line_words in zip(encoded, image_index, words):
        blocks = _blocks(ids, block_size)
        out["input_ids"] += blocks
        out["image_index"] += [image] * len(blocks)
        out["num_words"] += _words_per_block(line_words, block_size)
    return out


def _cached(key: dict, cache_dir: str | None, build) -> datasets.Dataset:
    """`build(scratch, in_memory)` once per key under `cache_dir` (None: in memory, every time). `datasets`' own cache
    is kept out, in a scratch folder per build: it keys a map by its function's name rather than its code, and a
    generator by file paths rather than contents, so it would hand back stale examples after either changed."""
    if cache_dir is None:
        with tempfile.TemporaryDirectory() as scratch:
            return build(scratch, True)
    key = {**key, "format": EXAMPLES_FORMAT}
    path = Path(cache_dir) / hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    if (path / "dataset_info.json").exists():
        return datasets.load_from_disk(str(path))
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: parallel runs may build one entry at once
    scratch = tmp.with_suffix(".scratch")
    build(str(scratch), False).save_to_disk(str(tmp))
    shutil.rmtree(scratch, ignore_errors=True)  # a build in memory leaves none
    try:
        tmp.rename(path)  # atomic: readers see no entry or a whole one
    except OSError:  # the entry exists: another process saved it first, or something unfinished is in the way
        if not (path / "dataset_info.json").exists():
            # Move the leftover aside (never delete a folder another process may have just completed) and retry.
            leftover = path.with_name(f"{path.name}.{os.getpid()}.leftover")
            try:
                path.rename(leftover)
                tmp.rename(path)
            except OSError:
                pass
            shutil.rmtree(leftover, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(path))


def _file_key(paths: Sequence) -> list:
    return [[str(Path(p).resolve()), os.path.getsize(p), os.path.getmtime(p)] for p in paths]


def text_dataset(files: Sequence[Path], tokenizer, block_size: int, packing: bool = False,
                 cache_dir: str | None = None, num_proc: int | None = None) -> datasets.Dataset:
    def build(scratch: str, in_memory: bool):
        lines = datasets.Dataset.from_generator(text_rows, gen_kwargs={"files": [str(f) for f in files]},
                                                cache_dir=scratch, keep_in_memory=in_memory)
        return lines.map(tokenize_examples, batched=True, batch_size=2000, remove_columns=["text"], num_proc=num_proc,
                         fn_kwargs={"tokenizer": tokenizer, "block_size": block_size, "packing": packing},
                         desc=f"Tokenizing {len(files)} text file(s)")

    key = {"kind": "text", "files": _file_key(files), "tokenizer": _tokenizer_key(tokenizer), "block": block_size,
           "packing": packing}
    return _cached(key, cache_dir, build)


def caption_dataset(captions: list[str], caption_files: Sequence[str], tokenizer, block_size: int,
                    cache_dir: str | None = None, first_image_index: int = 0) -> datasets.Dataset:
    """Captions as examples whose `image_index` is their row in an `ImageStore` (starting at `first_image_index`)."""
    def build(scratch: str, in_memory: bool):  # from_dict is in memory, so `datasets` caches nothing here
        cleaned = [clean_line(c) for c in captions]
        image_index = list(range(first_image_index, first_image_index + len(cleaned)))
        raw = datasets.Dataset.from_dict({"text": cleaned, "image_index": image_index})
        raw = raw.filter(lambda t: [bool(x) for x in t], input_columns="text", batched=True, desc="Dropping empty captions")
        return raw.map(tokenize_examples, batched=True, batch_size=2000, remove_columns=["text"],
                       fn_kwargs={"tokenizer": tokenizer, "block_size": block_size, "packing": False},
                       desc=f"Tokenizing {len(cleaned)} captions")

    key = {"kind": "captions", "files": _file_key(caption_files), "tokenizer": _tokenizer_key(tokenizer),
           "block": block_size, "first_image_index": first_image_index}
    return _cached(key, cache_dir, build)


@dataclass
class GroundedCollator:
    """Right-pads a batch, sets labels to -100 on padding, and attaches the rows' image embeddings.

    Batches without any image row carry no image arguments at all (the model then runs text-only); mixed batches
    carry zeros for text rows and an `image_mask` saying which rows have an image.
    """

    pad_token_id: int
    images: ImageStore | None = None
    input_columns = ("input_ids", "image_index")

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        length = max(len(r["input_ids"]) for r in rows)
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
