"""Data-loading throughput and memory.

Text: `gatedgpt2.data.text_dataset` (clean, tokenize, one example per line or packed blocks, through `datasets.map`)
on the BabyLM text split into one utterance per line, against the bare fast tokenizer on the same lines (the ceiling:
no cleaning, blocks or Arrow). Lines/s, tokens/s, and the reload time of the on-disk cache.

Embeddings: `gatedgpt2.data.ImageStore` + `GroundedCollator` reading random batches from memory-mapped `.npy` shards of
growing size N, against `np.load` of the whole array (the peer), each in its own process. Memory is split into the
process's private memory (flat in N when memory-mapped, N rows with `np.load`) and the mapped file pages (shared page
cache the kernel can drop; the kernel maps it in large chunks around every row read).

    python bench/data.py                                  # BabyLM train_600k; N up to 300k x 768
    python bench/data.py --rows 3000,30000 --image-tokens 1
"""

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from process_memory import memory_mb

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT.parent / "shared" / "data" / "babylm" / "text" / "train_600k"
WIDTH = 768  # DINOv2-base


def utterance_files(source: Path, out: Path) -> list[Path]:
    """The BabyLM files hold one line each; split them at sentence ends so that a line is an utterance."""
    files = []
    for path in sorted(source.glob("*.train")):
        sentences = re.split(r"(?<=[.?!])\s+", path.read_text(encoding="utf-8"))
        target = out / path.name
        target.write_text("\n".join(sentences) + "\n", encoding="utf-8")
        files.append(target)
    return files


def bench_text(source: Path, block_size: int, vocab_size: int) -> list[dict]:
    import datasets

    from gatedgpt2.data import iter_text_lines, text_dataset, train_tokenizer

    datasets.disable_progress_bars()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = utterance_files(source, Path(tmp))
        lines = list(iter_text_lines(files))
        start = time.perf_counter()
        tokenizer = train_tokenizer(lines, vocab_size, block_size)
        rows.append(dict(run="train BPE tokenizer", lines=len(lines), seconds=time.perf_counter() - start))

        start = time.perf_counter()
        tokens = sum(len(ids) for i in range(0, len(lines), 2000)
                     for ids in tokenizer(lines[i : i + 2000], verbose=False)["input_ids"])
        ceiling = time.perf_counter() - start
        rows.append(dict(run="peer: bare tokenizer, batches of 2000", lines=len(lines), tokens=tokens, seconds=ceiling))

        for packing in (False, True):
            for num_proc in (None, 2):
                start = time.perf_counter()
                dataset = text_dataset(files, tokenizer, block_size, packing=packing, num_proc=num_proc)
                rows.append(dict(run=f"text_dataset, {'packed' if packing else 'line per example'}, "
                                     f"{num_proc or 1} process(es)", lines=len(lines), examples=len(dataset),
                                 tokens=sum(map(len, dataset["input_ids"])), seconds=time.perf_counter() - start))

        cache = Path(tmp) / "cache"
        text_dataset(files, tokenizer, block_size, packing=True, cache_dir=str(cache))
        start = time.perf_counter()
        text_dataset(files, tokenizer, block_size, packing=True, cache_dir=str(cache))
        rows.append(dict(run="text_dataset, packed, reloaded from its cache", lines=len(lines),
                         seconds=time.perf_counter() - start))
    for row in rows:
        row["lines_per_s"] = row["lines"] / row["seconds"]
        row["ratio_to_peer"] = ceiling / row["seconds"] if "tokens" in row else None
    return rows


def write_shard(path: Path, rows: int, tokens: int) -> None:
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, tokens, WIDTH))
    rng = np.random.default_rng(0)
    for start in range(0, rows, 4096):  # chunked, so writing N rows never holds N rows in memory
        stop = min(rows, start + 4096)
        array[start:stop] = rng.standard_normal((stop - start, tokens, WIDTH), dtype=np.float32)
    array.flush()
    del array


def embedding_worker(path: str, mode: str, batches: int, batch_size: int) -> dict:
    """Runs in its own process: open the shard as training does (or load it whole), read random batches."""
    __import__("torch")  # loaded before the baseline, as in training

    from gatedgpt2.data import GroundedCollator, ImageStore

    baseline = memory_mb()
    start = time.perf_counter()
    if mode == "mmap":
        store = ImageStore([path])
        rows_of = store.rows
        count = len(store)
    else:
        array = np.load(path)
        rows_of = lambda indices: array[indices]  # noqa: E731
        count = len(array)
    opened = time.perf_counter() - start
    after_open = memory_mb()
    rng = np.random.default_rng(0)
    collate = GroundedCollator(pad_token_id=0, images=store) if mode == "mmap" else None
    times = []
    for _ in range(batches):
        index = rng.integers(0, count, batch_size)
        start = time.perf_counter()
        if collate is not None:
            collate([{"input_ids": [1, 2, 3], "image_index": int(i)} for i in index])
        else:
            rows_of(np.sort(index))
        times.append(time.perf_counter() - start)
    after_reads = memory_mb()
    return dict(open_s=opened, private_after_open_mb=after_open["anon"] - baseline["anon"],
                private_after_reads_mb=after_reads["anon"] - baseline["anon"],
                mapped_file_after_reads_mb=after_reads["file"] - baseline["file"],
                rss_after_reads_mb=after_reads["rss"] - baseline["rss"], rows_read=batches * batch_size,
                rows_per_s=batch_size / statistics.median(times))


def bench_embeddings(sizes: list[int], image_tokens: list[int], batches: int, batch_size: int,
                     max_bytes: float) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for tokens in image_tokens:
            for n in sizes:
                if n * tokens * WIDTH * 4 > max_bytes:
                    print(f"skipping N={n:,} x {tokens} token(s): over --max-file-gb")
                    continue
                path = Path(tmp) / f"emb_{n}_{tokens}.npy"
                write_shard(path, n, tokens)
                for mode in ("mmap", "np.load"):
                    out = subprocess.run(
                        [sys.executable, __file__, "--embedding-worker", str(path), mode, str(batches),
                         str(batch_size)],
                        check=True, capture_output=True, text=True, cwd=ROOT,
                    ).stdout
                    result = json.loads(out.strip().splitlines()[-1])
                    rows.append(dict(rows=n, image_tokens=tokens, file_mb=path.stat().st_size / 2**20,
                                     mode=mode, **result))
                path.unlink()
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text-dir", default=str(TEXT))
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--rows", default="3000,30000,300000", help="embedding rows N")
    parser.add_argument("--image-tokens", default="1,17", help="global vector (1) and CLS + 16 patches (17)")
    parser.add_argument("--max-file-gb", type=float, default=2.0, help="skip shards larger than this")
    parser.add_argument("--batches", type=int, default=20, help="random batches read (keep their rows << N)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", default="bench/results/data.json")
    parser.add_argument("--embedding-worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.embedding_worker:
        path, mode, batches, batch_size = args.embedding_worker
        print(json.dumps(embedding_worker(path, mode, int(batches), int(batch_size))))
        return

    text = bench_text(Path(args.text_dir), args.block_size, args.vocab_size)
    print("| text run | lines | tokens | lines/s | x bare tokenizer |\n| --- | ---: | ---: | ---: | ---: |")
    for r in text:
        ratio = f"{r['ratio_to_peer']:.2f}" if r["ratio_to_peer"] is not None else ""
        tokens = f"{r['tokens']:,}" if "tokens" in r else ""
        print(f"| {r['run']} | {r['lines']:,} | {tokens} | {r['lines_per_s']:,.0f} | {ratio} |")

    tokens = [int(t) for t in args.image_tokens.split(",")]
    sizes = [int(n) for n in args.rows.split(",")]
    embeddings = bench_embeddings(sizes, tokens, args.batches, args.batch_size, args.max_file_gb * 2**30)
    print("| N | tokens | file | loader | private memory after open | after reads | mapped file pages | rows/s |\n"
          "| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for r in embeddings:
        print(f"| {r['rows']:,} | {r['image_tokens']} | {r['file_mb']:,.0f} MB | {r['mode']} | "
              f"{r['private_after_open_mb']:,.0f} MB | {r['private_after_reads_mb']:,.0f} MB | "
              f"{r['mapped_file_after_reads_mb']:,.0f} MB | {r['rows_per_s']:,.0f} |")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(args=vars(args), text=text, embeddings=embeddings), indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
