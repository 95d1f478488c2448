"""Greedy generation with an image: GatedGPT2 with and without the KV cache (the cache also keeps the image's
cross-attention keys and values), against transformers' GPT2LMHeadModel(add_cross_attention=True) of equal size fed the
same image tokens. Median of several timed runs after warm-up, models alternating; tokens/s of new tokens. With
`--compile` each model's forward is compiled with dynamic shapes (the cache grows every step), and the warm-up's time
is reported as the compile time. Flags shared by every benchmark (`--device`, `--dtype`, `--compile`, `--one-thread`):
see common.py.

    python bench/generate.py                        # small size, batch 1 and 8, 64 new tokens
    python bench/generate.py --sizes paper --repeats 2
"""

import argparse
import json
import statistics

import torch
from common import Setup, add_arguments, load_average
from transformers import GPT2Config, GPT2LMHeadModel

from modeling_gatedgpt import GatedGPT2Config, GatedGPT2ForCausalLM

SIZES = {"small": dict(n_layer=4, n_embd=256, n_head=4), "paper": dict(n_layer=8, n_embd=768, n_head=8)}
VOCAB = 16384


def timed_generate(setup: Setup, model, inputs: dict, new_tokens: int, use_cache: bool) -> float:
    start = setup.clock()
    with torch.no_grad(), setup.autocast():
        out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             use_cache=use_cache, pad_token_id=0)
    elapsed = setup.clock() - start
    assert out.shape[1] == inputs["input_ids"].shape[1] + new_tokens
    return elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="small")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--image-tokens", type=int, default=65, help="CLS + 64 patches")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="default: bench/results/generate.json (gpu-generate.json on CUDA)")
    add_arguments(parser)
    args = parser.parse_args()
    setup = Setup.from_args(args)
    device, described = setup.device, setup.describe()

    rows = []
    for size in args.sizes.split(","):
        spec = SIZES[size]
        text = dict(**spec, n_inner=4 * spec["n_embd"], n_positions=args.prompt + args.new_tokens, vocab_size=VOCAB,
                    bos_token_id=0, eos_token_id=0, pad_token_id=0)
        torch.manual_seed(0)
        ours = setup.prepare(GatedGPT2ForCausalLM(GatedGPT2Config(**text, image_embed_dim=spec["n_embd"])).eval(),
                             dynamic=True)
        peer = setup.prepare(GPT2LMHeadModel(GPT2Config(**text, add_cross_attention=True)).eval(), dynamic=True)
        for batch in map(int, args.batches.split(",")):
            ids = torch.randint(1, VOCAB, (batch, args.prompt), device=device)
            prompt = dict(input_ids=ids, attention_mask=torch.ones_like(ids))
            image = torch.randn(batch, args.image_tokens, spec["n_embd"], device=device, dtype=setup.weight_dtype)
            runs = {
                "ours, cache": (ours, dict(**prompt, image_embeds=image), True),
                "ours, no cache": (ours, dict(**prompt, image_embeds=image), False),
                "peer, cache": (peer, dict(**prompt, encoder_hidden_states=image), True),
            }
            warmup = {name: timed_generate(setup, model, inputs, args.new_tokens, cache)
                      for name, (model, inputs, cache) in runs.items()}
            times = {name: [] for name in runs}
            for _ in range(args.repeats):
                for name, (model, inputs, cache) in runs.items():
                    times[name].append(timed_generate(setup, model, inputs, args.new_tokens, cache))
            medians = {name: statistics.median(t) for name, t in times.items()}
            for name, median in medians.items():
                rows.append(dict(size=size, batch=batch, run=name, seconds=median,
                                 seconds_range=[min(times[name]), max(times[name])],
                                 compile_s=warmup[name] - median if args.compile else None,
                                 new_tokens_per_s=batch * args.new_tokens / median,
                                 speedup_vs_no_cache=medians["ours, no cache"] / median,
                                 ours_vs_peer=medians["peer, cache"] / median if name.startswith("ours") else 1.0))

    print(f"{described['machine']}, {args.dtype}{', compiled' if args.compile else ''}, {described['clock']} clock, "
          f"load {described['load_before']}; prompt {args.prompt}, {args.new_tokens} new tokens, "
          f"{args.image_tokens} image tokens")
    print("| size | batch | run | new tokens/s | x no cache | ours/peer |\n| --- | ---: | --- | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['size']} | {r['batch']} | {r['run']} | {r['new_tokens_per_s']:,.0f} | "
              f"{r['speedup_vs_no_cache']:.1f} | {r['ours_vs_peer']:.2f} |")
    out = setup.out_path("generate", args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(**described, load_after=load_average(), args=vars(args), rows=rows), indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
