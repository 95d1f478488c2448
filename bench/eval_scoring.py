"""BLiMP-fast scoring throughput: our batched, length-sorted scorer at several batch sizes against a naive scorer that
runs one sentence at a time (the BabyLM pipeline's computation, unbatched). Each configuration runs in its own process,
so its peak RSS is its own; the naive scorer runs on `--naive-pairs` pairs spread evenly over the paradigms, and the
pairs/s are compared. Flags shared by every benchmark (`--device`, `--dtype`, `--compile`, `--one-thread`): see
common.py; with `--compile` the model's forward is compiled with dynamic shapes, and the first batch pays for it.

    python bench/eval_scoring.py                        # a random 4 x 256 model, BabyLM-dev BPE (8192)
    python bench/eval_scoring.py --model outputs/babylm_text
"""

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from common import Setup, add_arguments, forwarded_flags, load_average
from process_memory import rss_mb

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "babylm"


def make_checkpoint(out: Path) -> str:
    from gatedgpt2.data import iter_text_lines, text_files, train_tokenizer
    from modeling_gatedgpt import GatedGPT2Config, GatedGPT2ForCausalLM

    tokenizer = train_tokenizer(iter_text_lines(text_files(DATA / "text" / "dev", "*.dev")), 8192, 128)
    config = GatedGPT2Config(vocab_size=len(tokenizer), n_positions=128, n_layer=4, n_embd=256, n_head=4,
                             n_inner=1024, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    GatedGPT2ForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def naive_choice(model, tokenizer, pair) -> int:
    """One sentence per forward pass, no padding: the pipeline's computation with batch size 1."""
    scores = []
    for sentence in pair:
        ids = torch.tensor([tokenizer(sentence)["input_ids"]], device=model.device)
        logits = model(input_ids=ids[:, :-1]).logits
        scores.append(torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).sum().item())
    return int(scores[1] > scores[0])


def spread(items: list, count: int | None) -> list:
    """`count` items taken evenly over the task, so that every paradigm is in; all of them when count is None."""
    return items if count is None else items[:: max(1, len(items) // count)][:count]


@torch.no_grad()
def worker(setup: Setup, checkpoint: str, batch_size: int, naive_pairs: int, pairs: int | None) -> dict:
    from gatedgpt2.eval.babylm.tasks import read_task
    from gatedgpt2.eval.babylm.zero_shot import evaluate_task, load_accuracy_metric
    from gatedgpt2.eval.checkpoint import load_checkpoint

    model, tokenizer = load_checkpoint(checkpoint, device=str(setup.device))
    model = setup.prepare(model, dynamic=True)
    task = read_task(DATA / "evaluation_data", "blimp", fast=True)
    metric = load_accuracy_metric()
    rss_before = rss_mb()[0]
    start = setup.clock()
    with setup.autocast():
        if batch_size == 0:
            items = spread(task.items, naive_pairs)
            for item in items:
                naive_choice(model, tokenizer, item.sentences)
        else:
            items = spread(task.items, pairs)
            evaluate_task(model, tokenizer, dataclasses.replace(task, items=items), batch_size=batch_size,
                          metric=metric, progress=False)
    seconds = setup.clock() - start
    return {"batch_size": batch_size or "naive (1 sentence)", "pairs": len(items), "seconds": seconds,
            "pairs_per_s": len(items) / seconds, "threads": torch.get_num_threads(),
            "peak_rss_mb": rss_mb()[1], "rss_before_mb": rss_before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint to score with (default: a random 4 x 256 model)")
    parser.add_argument("--batch-sizes", default="16,64,256")
    parser.add_argument("--naive-pairs", type=int, default=1000)
    parser.add_argument("--pairs", type=int, help="pairs for the batched scorer, spread over the task (default: all)")
    parser.add_argument("--out", help="default: bench/results/eval_scoring.json (gpu-eval_scoring.json on CUDA)")
    parser.add_argument("--worker", nargs=2, metavar=("CHECKPOINT", "BATCH"), help=argparse.SUPPRESS)
    add_arguments(parser)
    args = parser.parse_args()
    setup = Setup.from_args(args)
    if args.worker:
        print(json.dumps(worker(setup, args.worker[0], int(args.worker[1]), args.naive_pairs, args.pairs)))
        return
    shared = [*forwarded_flags(args), "--naive-pairs", str(args.naive_pairs),
              *(["--pairs", str(args.pairs)] if args.pairs else [])]
    described = setup.describe()

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.model or make_checkpoint(Path(tmp) / "model")
        rows = []
        for batch_size in [0, *map(int, args.batch_sizes.split(","))]:
            result = subprocess.run([sys.executable, __file__, "--worker", checkpoint, str(batch_size), *shared],
                                    cwd=ROOT, check=True, capture_output=True, text=True)
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    naive = rows[0]["pairs_per_s"]
    print("\n| scorer | pairs | pairs/s | x naive | peak RSS (MB) |\n| --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        row["speedup_vs_naive"] = row["pairs_per_s"] / naive
        print(f"| {row['batch_size']} | {row['pairs']} | {row['pairs_per_s']:,.0f} | {row['speedup_vs_naive']:.1f} | "
              f"{row['peak_rss_mb']:,.0f} |")
    out = setup.out_path("eval_scoring", args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**described, "load_after": load_average(), "model": args.model or
                               "random 4 x 256, vocab 8192", "args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
