"""Text and captions in the BabyLM formats, as tokenized, cached `datasets` examples.

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
import stat
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import datasets
import numpy as np

from .images import ImageStore

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


def decode_utf8(raw: bytes, name: str, first_line: int = 1) -> str:
    """`raw` as UTF-8 text; bytes that are not UTF-8 are an error naming `name`, the line (counting from
    `first_line`), the byte and its column."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = first_line + raw.count(b"\n", 0, err.start)
        column = err.start - raw.rfind(b"\n", 0, err.start)  # rfind gives -1 on the first line
        raise ValueError(f"{name}:{line}: not UTF-8 text (byte {raw[err.start]:#04x} at column {column})") from None


def _utf8_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of a UTF-8 text file, read line by line; anything else (a FIFO, bytes that are not UTF-8)
    is an error naming the file (and line)."""
    if not stat.S_ISREG(path.stat().st_mode):
        raise ValueError(f"{path}: not a regular file (a FIFO, device or folder); expected UTF-8 text")
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, 1):
            yield lineno, decode_utf8(raw, str(path), lineno)


def iter_text_lines(files: Iterable[Path]) -> Iterator[str]:
    for path in files:
        for _, line in _utf8_lines(Path(path)):
            if line := clean_line(line):
                yield line


def text_rows(files: list[str]) -> Iterator[dict]:
    """`datasets.Dataset.from_generator` source: one {"text": line} per cleaned, non-empty line."""
    for line in iter_text_lines(Path(f) for f in files):
        yield {"text": line}


def read_captions(path: str | os.PathLike) -> list[str]:
    """A JSON list of strings, or JSONL with one string or {"caption": str} per line; errors say file:line."""
    path = Path(path)
    lines = list(_utf8_lines(path))
    if path.suffix == ".jsonl":
        captions = []
        for lineno, line in lines:
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
    else:
        try:
            captions = json.loads("".join(line for _, line in lines))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{err.lineno}: malformed JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            raise ValueError(f"{path}: expected a JSON list of caption strings")
    if not captions:
        raise ValueError(f"{path}: no captions")
    return captions


def load_caption_shards(caption_files: Sequence[str], embedding_files: Sequence[str],
                        expected_dim: int | None = None) -> tuple[list[str], ImageStore]:
    captions = [c for f in caption_files for c in read_captions(f)]
    store = ImageStore(embedding_files, expected_dim)
    if len(captions) != len(store):
        raise ValueError(f"caption_files {list(caption_files)} hold {len(captions)} captions but embedding_files "
                         f"{store.files} hold {len(store)} embeddings; they must align row by row")
    return captions, store


def _tokenizer_key(tokenizer) -> str:
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
    # long lines are split below
    encoded = tokenizer(batch["text"], add_special_tokens=True, verbose=False)["input_ids"]
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
    remove_abandoned_builds(Path(cache_dir))
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


def remove_abandoned_builds(cache_dir: Path) -> None:
    """Delete the folders of cache builds whose process is gone (killed mid-build): `<entry>.<pid>.tmp`,
    `.scratch` and `.leftover` of this machine's processes. A build of a live process is left alone."""
    for folder in cache_dir.glob("*.*.*"):
        _, pid, suffix = folder.name.rsplit(".", 2)
        if suffix not in ("tmp", "scratch", "leftover") or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:  # another user's live process
            pass


def text_dataset(files: Sequence[Path], tokenizer, block_size: int, packing: bool = False,
                 cache_dir: str | None = None, num_proc: int | None = None) -> datasets.Dataset:
    def build(scratch: str, in_memory: bool):
        if next(iter_text_lines(files), None) is None:  # stops at the first line with text
            raise ValueError(f"text_dir: {', '.join(str(f) for f in files)} hold no text (every line is blank)")
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
        raw = raw.filter(lambda t: [bool(x) for x in t], input_columns="text", batched=True,
                         desc="Dropping empty captions")
        return raw.map(tokenize_examples, batched=True, batch_size=2000, remove_columns=["text"],
                       fn_kwargs={"tokenizer": tokenizer, "block_size": block_size, "packing": False},
                       desc=f"Tokenizing {len(cleaned)} captions")

    key = {"kind": "captions", "files": _file_key(caption_files), "tokenizer": _tokenizer_key(tokenizer),
           "block": block_size, "first_image_index": first_image_index}
    return _cached(key, cache_dir, build)


def with_shuffled_images(captions: datasets.Dataset, num_images: int, seed: int) -> datasets.Dataset:
    """The captions each paired with another caption's image: a random cycle through all rows, so that no caption
    keeps its own and every image is still used once."""
    if num_images < 2:
        raise ValueError(f"image_pairing shuffled needs at least 2 captions to exchange images, got {num_images}")
    order = np.random.default_rng(seed).permutation(num_images)
    other = np.empty(num_images, dtype=np.int64)
    other[order] = np.roll(order, -1)
    return captions.map(lambda batch: {"image_index": [int(other[i]) for i in batch["image_index"]]}, batched=True,
                        desc="pairing captions with other images", load_from_cache_file=False)
