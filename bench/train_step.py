"""Training-step throughput of GatedGPT2 against transformers' GPT2LMHeadModel(add_cross_attention=True) of equal size.

Each step is forward + backward + AdamW on random tokens. Every configuration and its peer run in one process,
interleaved step by step after warm-up, and the median step time is reported with the ratio ours/peer (> 1 means
ours is faster) and the achieved FLOP/s as a fraction of a matmul peak measured in the same run (MFU). With
`--compile` both are compiled (inductor) and the first step's time less a steady step is the compile time. Peak memory
per configuration comes from a separate process that builds that model alone and takes two steps (peak RSS on CPU,
peak allocated memory on CUDA). `--profile MODEL` prints torch.profiler's op table for that model and the peer.
`--sync-debug` (CUDA) runs one more step of each under `torch.cuda.set_sync_debug_mode("error")`.
Flags shared by every benchmark (`--device`, `--dtype`, `--compile`, `--one-thread`): see common.py.

    python bench/train_step.py                       # tiny and small sizes
    python bench/train_step.py --sizes paper --steps 3 --one-thread
    python bench/train_step.py --sizes small --image-tokens 65 --profile soft-feature
"""

import argparse
import json
import statistics
import subprocess
import sys

import torch
from common import Setup, add_arguments, forwarded_flags, load_average, matmul_peak_flops
from process_memory import rss_mb
from torch.utils.flop_counter import FlopCounterMode
from transformers import GPT2Config, GPT2LMHeadModel

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
    "film": dict(gate="soft", gate_granularity="feature", modulation="film", modulation_target="cross_attn"),
    "none": dict(gate="none"),
}
VOCAB = 16384


class Runner:
    """One model, its optimizer and a fixed batch; `step()` times one training step."""

    def __init__(self, name, model, inputs, setup: Setup):
        self.name, self.inputs, self.setup = name, inputs, setup
        self.model = model.to(setup.device, setup.weight_dtype).train()
        self.params = sum(p.numel() for p in self.model.parameters())
        with FlopCounterMode(display=False) as counter, setup.autocast():  # counted eager, before any compiling
            self.model(**inputs).loss.backward()
        self.flops = counter.get_total_flops()
        self.model.zero_grad(set_to_none=True)
        self.model = setup.prepare(self.model)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.times, self.first_step_s = [], None

    def step(self, record=True):
        start = self.setup.clock()
        with self.setup.autocast():
            loss = self.model(**self.inputs).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        elapsed = self.setup.clock() - start
        if self.first_step_s is None:
            self.first_step_s = elapsed
        if record:
            self.times.append(elapsed)

    def sync_free(self) -> bool | str:
        """One step under CUDA's sync debug mode: True, or the error the first host sync raised."""
        torch.cuda.set_sync_debug_mode("error")
        try:
            self.step(record=False)
            return True
        except RuntimeError as error:
            return str(error).splitlines()[0]
        finally:
            torch.cuda.set_sync_debug_mode("default")


def build_runners(size, image_tokens, setup: Setup, batch=None, seq=None, names=("peer", *VARIANTS)):
    """The peer and the variants in `names`, in that order, each with the same batch."""
    spec = SIZES[size]
    batch, seq = batch or spec["batch"], seq or spec["seq"]
    text = dict(n_layer=spec["n_layer"], n_embd=spec["n_embd"], n_head=spec["n_head"], n_inner=4 * spec["n_embd"],
                n_positions=max(128, seq), vocab_size=VOCAB, bos_token_id=0, eos_token_id=0)
    ids = torch.randint(0, VOCAB, (batch, seq), device=setup.device)
    image = torch.randn(batch, image_tokens, spec["n_embd"], device=setup.device, dtype=setup.weight_dtype)
    torch.manual_seed(0)
    runners = []
    if "peer" in names:
        peer = GPT2LMHeadModel(GPT2Config(**text, add_cross_attention=True))
        runners.append(Runner("peer", peer, dict(input_ids=ids, encoder_hidden_states=image, labels=ids), setup))
    for name, variant in VARIANTS.items():
        if name in names:
            config = GatedGPT2Config(**text, image_embed_dim=spec["n_embd"], **variant)
            model = GatedGPT2ForCausalLM(config)
            runners.append(Runner(name, model, dict(input_ids=ids, image_embeds=image, labels=ids), setup))
    return runners, batch * seq


def peak_memory_worker(args, size: str, image_tokens: int, model: str) -> float:
    """Peak memory (MB) of two training steps of `model` alone: process peak RSS on CPU, peak allocated on CUDA."""
    setup = Setup.from_args(args)
    (runner,), _ = build_runners(size, image_tokens, setup, args.batch, args.seq, names=[model])
    runner.step(record=False)
    runner.step(record=False)
    if setup.device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return rss_mb()[1]


def peak_memory(args, size: str, image_tokens: int, model: str) -> float:
    """The worker in a process of its own, with this run's device, dtype, compile and batch flags."""
    shared = [*forwarded_flags(args), *(["--batch", str(args.batch)] if args.batch else []),
              *(["--seq", str(args.seq)] if args.seq else [])]
    command = [sys.executable, __file__, "--peak-memory-worker", size, str(image_tokens), model, *shared]
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
    parser.add_argument("--models", help="comma-separated variants to run beside the peer (default: all)")
    parser.add_argument("--batch", type=int, help="rows per batch (default: 16, the size table's)")
    parser.add_argument("--seq", type=int, help="tokens per row (default: the size table's)")
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-memory", action="store_true", help="skip the per-configuration peak-memory processes")
    parser.add_argument("--sync-debug", action="store_true", help="CUDA: one step each with sync debug mode 'error'")
    parser.add_argument("--profile", choices=list(VARIANTS),
                        help="print torch.profiler op tables for this and the peer")
    parser.add_argument("--out", help="default: bench/results/train_step.json (gpu-train_step.json on CUDA)")
    parser.add_argument("--peak-memory-worker", nargs=3, help=argparse.SUPPRESS)
    add_arguments(parser)
    args = parser.parse_args()
    if args.peak_memory_worker:
        size, image_tokens, model = args.peak_memory_worker
        print(peak_memory_worker(args, size, int(image_tokens), model))
        return
    setup = Setup.from_args(args)
    if args.sync_debug and setup.device.type != "cuda":
        parser.error(f"--sync-debug is CUDA's sync debug mode, and --device is {setup.device}")
    models = args.models.split(",") if args.models else list(VARIANTS)
    unknown = sorted(set(models) - set(VARIANTS))
    if unknown:
        parser.error(f"--models: unknown {unknown}; expected some of {list(VARIANTS)}")
    peak = matmul_peak_flops(setup)
    described = setup.describe()
    print(f"{described['machine']}, {args.dtype}{', compiled' if args.compile else ''}, torch {torch.__version__}, "
          f"{described['clock']} clock, load {described['load_before']}; matmul peak {peak / 1e9:.0f} GFLOP/s")

    if args.profile:
        for size in args.sizes.split(","):
            for image_tokens in map(int, args.image_tokens.split(",")):
                print(f"== {size}, {image_tokens} image token(s)")
                profile([build_runners(size, image_tokens, setup, args.batch, args.seq, names=[m])[0][0]
                         for m in ("peer", args.profile)])
        return

    rows = []
    for size in args.sizes.split(","):
        for image_tokens in map(int, args.image_tokens.split(",")):
            runners, tokens = build_runners(size, image_tokens, setup, args.batch, args.seq, ["peer", *models])
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
                    params=runner.params, step_s=median, step_s_range=[min(runner.times), max(runner.times)],
                    compile_s=runner.first_step_s - median if args.compile and args.warmup else None,
                    sync_free=runner.sync_free() if args.sync_debug else None,
                    peak_memory_mb=None if args.no_memory else peak_memory(args, size, image_tokens, runner.name),
                ))
            del runners

    memory = "peak allocated" if setup.device.type == "cuda" else "peak RSS"
    print("| size | image tokens | model | params | tokens/s | ours/peer | FLOPs vs peer | MFU | "
          f"{memory} | compile |\n"
          "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        peak_mb = f"{r['peak_memory_mb']:,.0f} MB" if r["peak_memory_mb"] is not None else ""
        compile_s = f"{r['compile_s']:.0f} s" if r["compile_s"] is not None else ""
        print(f"| {r['size']} | {r['image_tokens']} | {r['model']} | {r['params'] / 1e6:.1f} M | "
              f"{r['tokens_per_s']:,.0f} | {r['ratio_to_peer']:.2f} | {r['flops_ratio_to_peer']:.2f}x | "
              f"{r['mfu']:.0%} | {peak_mb} | {compile_s} |")
        if r["sync_free"] is not None:
            print(f"  sync debug mode: {'no host sync' if r['sync_free'] is True else r['sync_free']}")
    out = setup.out_path("train_step", args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(**described, load_after=load_average(), matmul_peak_flops=peak,
                                   args=vars(args), rows=rows), indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
