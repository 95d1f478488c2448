"""What `find_unused_parameters=True` costs a DDP training step: two gloo processes on CPU, one thread each, the same
GatedGPT2 wrapped twice (one DDP with the flag, one without), stepping alternately on the same image batch.

DDP needs the flag for GatedGPT2 runs: a text-only batch leaves the whole image path without gradient, and with one
image token per row the cross-attention query is never computed. The flag makes DDP walk the autograd graph after
each forward to find what did not run. With CLS + patch tokens and every row an image (`--image-tokens 65`, the
default), every parameter is used, so both wrappers do the same work but the graph walk.

    python bench/ddp_find_unused.py --size small --steps 20
"""

import argparse
import copy
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from common import RESULTS, load_average
from torch.nn.parallel import DistributedDataParallel

from modeling_gatedgpt import GatedGPT2Config, GatedGPT2ForCausalLM

SIZES = {"tiny": dict(n_layer=2, n_embd=64, n_head=2), "small": dict(n_layer=4, n_embd=256, n_head=4),
         "paper": dict(n_layer=8, n_embd=768, n_head=8)}


def worker(rank: int, args, port: int, out: Path) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    spec = SIZES[args.size]
    torch.manual_seed(0)
    model = GatedGPT2ForCausalLM(GatedGPT2Config(**spec, n_inner=4 * spec["n_embd"], vocab_size=8192,
                                                 n_positions=args.seq, image_embed_dim=spec["n_embd"]))
    model.set_input_value_checks(False)
    wrapped = {"find_unused_parameters=True": DistributedDataParallel(model, find_unused_parameters=True),
               "find_unused_parameters=False": DistributedDataParallel(copy.deepcopy(model))}
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in wrapped.items()}
    generator = torch.Generator().manual_seed(rank)
    ids = torch.randint(0, 8192, (args.batch, args.seq), generator=generator)
    image = torch.randn(args.batch, args.image_tokens, spec["n_embd"], generator=generator)
    times = {name: [] for name in wrapped}
    for step in range(args.warmup + args.steps):
        for name, ddp in wrapped.items():
            dist.barrier()
            start = time.process_time()
            ddp(input_ids=ids, image_embeds=image, labels=ids).loss.backward()
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
            if step >= args.warmup:
                times[name].append(time.process_time() - start)
    if rank == 0:
        medians = {name: statistics.median(t) for name, t in times.items()}
        base = medians["find_unused_parameters=False"]
        rows = [dict(run=name, step_s=m, step_s_range=[min(times[name]), max(times[name])], cost_vs_without=m / base)
                for name, m in medians.items()]
        out.write_text(json.dumps(dict(clock="process CPU time, 1 thread per process", load_before=args.load,
                                       load_after=load_average(), rows=rows,
                                       args={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                                             if k != "load"}), indent=2))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=list(SIZES), default="small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--image-tokens", type=int, default=65)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--port", type=int, help="the rendezvous port (default: a free one)")
    parser.add_argument("--out", type=Path, default=RESULTS / "ddp_find_unused.json")
    args = parser.parse_args()
    args.load = load_average()
    if args.port is None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            args.port = probe.getsockname()[1]
    mp.spawn(worker, args=(args, args.port, args.out), nprocs=2, join=True)
    result = json.loads(args.out.read_text())
    print(f"load {result['load_before']} -> {result['load_after']}; {args.size}, batch {args.batch} x {args.seq}, "
          f"{args.image_tokens} image tokens, {args.steps} steps\n| DDP | step (s) | range | x without |\n"
          "| --- | ---: | --- | ---: |")
    for r in result["rows"]:
        print(f"| {r['run']} | {r['step_s']:.3f} | {r['step_s_range'][0]:.3f}-{r['step_s_range'][1]:.3f} | "
              f"{r['cost_vs_without']:.3f} |")


if __name__ == "__main__":
    sys.exit(main())
