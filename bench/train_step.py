"""Training-step throughput of GatedGPT2 against transformers' GPT2LMHeadModel(add_cross_attention=True) of equal size.

Each step is forward + backward + AdamW on random tokens. Every configuration and its peer run in one process,
interleaved step by step after warm-up, and the median step time is reported with the ratio ours/peer (> 1 means
ours is faster) and the achieved FLOP/s as a fraction of a matmul peak measured in the same run (MFU). Peak memory
per configuration comes from a separate process that builds that model alone and takes two steps (peak RSS on CPU,
peak allocated memory on CUDA). `--profile MODEL` prints torch.profiler's op table for that model and the peer.

    python bench/train_step.py                       # tiny and small sizes
    python bench/train_step.py --sizes paper --steps 3
    python bench/train_step.py --sizes small --image-tokens 65 --profile soft-feature
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import GPT2Config, GPT2LMHeadModel

from process_memory import rss_mb
from modeling_gatedgpt import GatedGPT2Config, GatedGPT2ForCausalLM


SIZES = {
    "tiny": dict(n_layer=2, n_embd=128, n_head=4, batch=16, seq=64),
    "small": dict(n_layer=4, n_embd=256, n_head=4, batch=16, seq=128),
    "paper": dict(n_layer=8, n_embd=768, n_head=8, batch=16, seq=128),
}
VARIANTS = {
    "soft-feature": dict(gate="soft", gate_granularity="feature"),
    "soft-feature, linear encoder": dict(gate="soft", gate_granularity="feature", image_encoder="linear"),
    "soft-token": dict(gate="soft", gate_granularity="token"),
    "hard-feature": dict(gate="hard", gate_granularity="feature"),
    "none": dict(gate="none"),
}
VOCAB = 16384


def matmul_peak_flops(device, dtype, n=2048, repeats=10) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class Runner:
    """One model, its optimizer and a fixed batch; `step()` times one training step."""

    def __init__(self, name, model, inputs, device):
        self.name, self.inputs, self.device = name, inputs, device
        self.model = model.to(device).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.times = []
        with FlopCounterMode(display=False) as counter:
            self.model(**inputs).loss.backward()
        self.flops = counter.get_total_flops()
        self.optimizer.zero_grad(set_to_none=True)

    def step(self, record=True):
        synchronize(self.device)
        start = time.perf_counter()
        loss = self.model(**self.inputs).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        synchronize(self.device)
        if record:
            self.times.append(time.perf_counter() - start)


def build_runners(size, image_tokens, device, dtype, only=None):
    """The peer and every variant (or just `only`), each with the same batch."""
    spec = SIZES[size]
    text = dict(n_layer=spec["n_layer"], n_embd=spec["n_embd"], n_head=spec["n_head"], n_inner=4 * spec["n_embd"],
                n_positions=max(128, spec["seq"]), vocab_size=VOCAB, bos_token_id=0, eos_token_id=0)
    ids = torch.randint(0, VOCAB, (spec["batch"], spec["seq"]), device=device)
    image = torch.randn(spec["batch"], image_tokens, spec["n_embd"], device=device, dtype=dtype)
    torch.manual_seed(0)
    runners = []
    if only in (None, "peer"):
        peer = GPT2LMHeadModel(GPT2Config(**text, add_cross_attention=True)).to(dtype)
        runners.append(Runner("peer", peer, dict(input_ids=ids, encoder_hidden_states=image, labels=ids), device))
    for name, variant in VARIANTS.items():
        if only in (None, name):
            config = GatedGPT2Config(**text, image_embed_dim=spec["n_embd"], **variant)
            model = GatedGPT2ForCausalLM(config).to(dtype)
            runners.append(Runner(name, model, dict(input_ids=ids, image_embeds=image, labels=ids), device))
    return runners, spec["batch"] * spec["seq"]


def peak_memory_worker(size: str, image_tokens: int, model: str) -> float:
    """Peak memory (MB) of two training steps of `model` alone: process peak RSS on CPU, peak allocated on CUDA."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    (runner,), _ = build_runners(size, image_tokens, device, dtype, only=model)
    runner.step(record=False)
    runner.step(record=False)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return rss_mb()[1]


def peak_memory(size: str, image_tokens: int, model: str) -> float:
    command = [sys.executable, __file__, "--peak-memory-worker", size, str(image_tokens), model]
    return float(subprocess.run(command, check=True, capture_output=True, text=True).stdout.split()[-1])


def profile(runners, steps: int = 3, rows: int = 12) -> None:
    """torch.profiler's self-time op table of each runner over `steps` training steps."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    for runner in runners:
        runner.step(record=False)
        with torch_profile(activities=activities) as prof:
            for _ in range(steps):
                runner.step(record=False)
        events = prof.key_averages()
        print(f"\n{runner.name}: {sum(e.count for e in events) / steps:,.0f} ops per step")
        print(events.table(sort_by="self_cpu_time_total", row_limit=rows))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--image-tokens", default="1,65", help="global vector (1) and CLS + 64 patches (65)")
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-memory", action="store_true", help="skip the per-configuration peak-memory processes")
    parser.add_argument("--profile", choices=list(VARIANTS), help="print torch.profiler op tables for this and the peer")
    parser.add_argument("--out", default="bench/results/train_step.json")
    parser.add_argument("--peak-memory-worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_memory_worker:
        size, image_tokens, model = args.peak_memory_worker
        print(peak_memory_worker(size, int(image_tokens), model))
        return

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = matmul_peak_flops(device, dtype)
    machine = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{machine}, {dtype}, torch {torch.__version__}; matmul peak {peak / 1e9:.0f} GFLOP/s")

    if args.profile:
        for size in args.sizes.split(","):
            for image_tokens in map(int, args.image_tokens.split(",")):
                print(f"== {size}, {image_tokens} image token(s)")
                profile([build_runners(size, image_tokens, device, dtype, only=m)[0][0] for m in ("peer", args.profile)])
        return

    rows = []
    for size in args.sizes.split(","):
        for image_tokens in map(int, args.image_tokens.split(",")):
            runners, tokens = build_runners(size, image_tokens, device, dtype)
            for _ in range(args.warmup):
                for runner in runners:
                    runner.step(record=False)
            for _ in range(args.steps):  # interleaved, so drifts in machine load hit every model alike
                for runner in runners:
                    runner.step()
            peer_time = statistics.median(runners[0].times)
            for runner in runners:
                median = statistics.median(runner.times)
                rows.append(dict(
                    size=size, image_tokens=image_tokens, model=runner.name, tokens_per_s=tokens / median,
                    ratio_to_peer=peer_time / median, mfu=runner.flops / median / peak,
                    flops_ratio_to_peer=runner.flops / runners[0].flops,  # > 1: ours does more work per step
                    params=sum(p.numel() for p in runner.model.parameters()), step_s=median,
                    peak_memory_mb=None if args.no_memory else peak_memory(size, image_tokens, runner.name),
                ))
            del runners

    memory = "peak allocated" if device.type == "cuda" else "peak RSS"
    print(f"| size | image tokens | model | params | tokens/s | ours/peer | FLOPs vs peer | MFU | {memory} |\n"
          "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        peak_mb = f"{r['peak_memory_mb']:,.0f} MB" if r["peak_memory_mb"] is not None else ""
        print(f"| {r['size']} | {r['image_tokens']} | {r['model']} | {r['params'] / 1e6:.1f} M | {r['tokens_per_s']:,.0f} | "
              f"{r['ratio_to_peer']:.2f} | {r['flops_ratio_to_peer']:.2f}x | {r['mfu']:.0%} | {peak_mb} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(machine=machine, dtype=str(dtype), matmul_peak_flops=peak, rows=rows), indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
