"""The GPU benchmark in one command (`make bench-gpu`): the three benchmarks at paper size on one CUDA device, bf16
autocast (fp32 master weights) with SDPA attention, eager and compiled, each ours against the peer in the same
interleaved run; one training step of every model under `torch.cuda.set_sync_debug_mode("error")`. About 5 minutes on
one recent GPU. Writes `bench/results/gpu-*.json` and the table `bench/results/gpu-summary.md`.

    python bench/gpu.py                  # on a machine with CUDA
    python bench/gpu.py --tiny --out-dir /tmp/gpu-plumbing   # the same plumbing on CPU, tiny sizes, aot_eager

Runs one after the other, each in its own process (so that one's compile caches and memory do not touch the next).
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


def runs(tiny: bool) -> list[tuple[str, list[str]]]:
    """(result name, script + arguments) for each run. `tiny` shrinks every size, runs on CPU, and compiles only the
    training step: compiling generation and scoring for dynamic shapes takes a minute on CPU even with aot_eager,
    and their --compile is the same flag through the same common.Setup."""
    device = ["--device", "cpu" if tiny else "cuda", "--dtype", "bf16-autocast"]
    compiled = ["--compile", "--compile-backend", "aot_eager" if tiny else "inductor"]
    size, steps = (["--sizes", "tiny", "--batch", "4", "--seq", "16"], ["--steps", "1", "--warmup", "1"]) if tiny else \
        (["--sizes", "paper", "--batch", "64"], ["--steps", "10", "--warmup", "2"])
    models = ["--models", "soft-feature"] if tiny else []
    generate = ["--sizes", "small", "--batches", "1", "--prompt", "4", "--new-tokens", "2", "--repeats", "1"] if tiny \
        else ["--sizes", "paper", "--batches", "1,32", "--repeats", "3"]
    scoring = ["--pairs", "20", "--naive-pairs", "4", "--batch-sizes", "16"] if tiny else \
        ["--pairs", "4000", "--naive-pairs", "300", "--batch-sizes", "64,256"]
    every = [
        ("train_step", ["train_step.py", *device, *size, *steps, *models, "--image-tokens", "1,65", "--no-memory",
                        *([] if tiny else ["--sync-debug"])]),
        ("train_step-compiled", ["train_step.py", *device, *compiled, *size, *steps, "--image-tokens", "1",
                                 "--models", "soft-feature" if tiny else "soft-feature,none", "--no-memory"]),
        ("generate", ["generate.py", *device, *generate]),
        ("generate-compiled", ["generate.py", *device, *compiled, *generate]),
        ("eval_scoring", ["eval_scoring.py", *device, *scoring]),
        ("eval_scoring-compiled", ["eval_scoring.py", *device, *compiled, *scoring]),
    ]
    return [(name, run) for name, run in every
            if not tiny or name.startswith("train_step") or not name.endswith("-compiled")]


def table(results: dict[str, dict]) -> str:
    """One markdown table over every run: the ratio each benchmark reports, per model and configuration."""
    lines = ["| run | configuration | throughput | ours/peer | compile (s) |", "| --- | --- | ---: | ---: | ---: |"]
    for name, result in results.items():
        for r in result["rows"]:
            compile_s = f"{r['compile_s']:.0f}" if r.get("compile_s") is not None else ""
            if name.startswith("train_step"):
                sync = {True: ", sync-free", None: ""}.get(r["sync_free"], ", syncs")
                lines.append(f"| {name} | {r['size']}, {r['image_tokens']} image token(s), {r['model']}{sync} | "
                             f"{r['tokens_per_s']:,.0f} tokens/s | {r['ratio_to_peer']:.2f} | {compile_s} |")
            elif name.startswith("generate"):
                lines.append(f"| {name} | {r['size']}, batch {r['batch']}, {r['run']} | "
                             f"{r['new_tokens_per_s']:,.0f} new tokens/s | {r['ours_vs_peer']:.2f} | {compile_s} |")
            else:
                lines.append(f"| {name} | batch {r['batch_size']} | {r['pairs_per_s']:,.0f} pairs/s | "
                             f"x{r['speedup_vs_naive']:.1f} naive | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the plumbing on CPU: tiny sizes, aot_eager, no sync check")
    parser.add_argument("--out-dir", type=Path, default=BENCH / "results")
    args = parser.parse_args()
    if not args.tiny and not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs a CUDA device (torch.cuda.is_available() is False); --tiny runs its plumbing "
                 "on CPU")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    results, started = {}, time.perf_counter()
    for name, (script, *script_args) in runs(args.tiny):
        out = args.out_dir / f"gpu-{name}.json"
        print(f"== {name} ({time.perf_counter() - started:.0f} s in)", flush=True)
        subprocess.run([sys.executable, str(BENCH / script), *script_args, "--out", str(out)], cwd=ROOT, check=True)
        results[name] = json.loads(out.read_text())
    machine = next(iter(results.values()))["machine"]
    summary = (f"{machine}, torch {torch.__version__}, bf16 autocast, {time.perf_counter() - started:.0f} s in all\n\n"
               f"{table(results)}\n")
    (args.out_dir / "gpu-summary.md").write_text(summary)
    print(summary)


if __name__ == "__main__":
    main()
