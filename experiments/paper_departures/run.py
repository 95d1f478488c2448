"""How far each of GPT-2's choices moves GatedGPT2 from the function of the paper's code, alone: random weights in the
reference's layout (its base size), converted to the `paper_code` preset (which is the reference's function, as
tests/test_paper_fidelity.py checks), then one departure switched back to GPT-2's choice with the same weights. Max
|logit difference| over a batch of 4 x 32 tokens with a global image, per seed; the null is the paper_code preset itself
(0 up to float32 rounding).

    python experiments/paper_departures/run.py   # -> results.json and results.md beside it
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from modeling_gatedgpt import GatedGPT2ForCausalLM  # noqa: E402
from modeling_gatedgpt.convert_looking_to_learn import config_for, convert_state_dict  # noqa: E402
from tests.helpers.looking_to_learn_port import random_state_dict  # noqa: E402

DEPARTURES = {
    "none (paper_code preset)": {},
    "embeddings: E[x] + P[t], no sqrt(d) scale, no LayerNorm": dict(scale_embedding=False, embedding_norm=False),
    "final LayerNorm ln_f": dict(final_norm=True),
    "output head tied to the embeddings, no bias": dict(tie_word_embeddings=True, lm_head_bias=False),
    "FFN activation gelu_new (tanh) instead of exact GELU": dict(activation_function="gelu_new"),
    "image encoder pre-LN + final LayerNorm": dict(image_encoder_norm_position="pre"),
    "all of them (GatedGPT2's gpt2 defaults)": dict(scale_embedding=False, embedding_norm=False, final_norm=True,
                                                    tie_word_embeddings=True, lm_head_bias=False,
                                                    activation_function="gelu_new", image_encoder_norm_position="pre"),
}
SEEDS = (0, 1, 2)


def model_with(weights, converted, **departure):
    """The converted weights in a model with `departure` from the paper_code preset."""
    config = config_for(weights, "base", n_head=8, **departure)
    model = GatedGPT2ForCausalLM(config).eval()
    if not config.embedding_norm:
        converted = {k: v for k, v in converted.items() if not k.startswith("transformer.ln_embd.")}
    if config.tie_word_embeddings:
        converted = {k: v for k, v in converted.items() if not k.startswith("lm_head.")}
    model.load_state_dict(converted, strict=False)  # a new ln_f / encoder ln_f keeps its identity initialisation
    return model


def main():
    results = {name: [] for name in DEPARTURES}
    for seed in SEEDS:
        weights = random_state_dict(vocab=16000, d=768, hidden=3072, encoder_layers=5, decoder_layers=8,
                                    image_dim=768, seed=seed)
        generator = torch.Generator().manual_seed(100 + seed)
        ids = torch.randint(0, 16000, (4, 32), generator=generator)
        image = torch.randn(4, 768, generator=generator)
        paper = GatedGPT2ForCausalLM(config_for(weights, "base", n_head=8))
        converted = convert_state_dict(weights, paper)
        with torch.no_grad():
            reference = model_with(weights, converted)(ids, image_embeds=image).logits
            for name, departure in DEPARTURES.items():
                logits = model_with(weights, converted, **departure)(ids, image_embeds=image).logits
                results[name].append((logits - reference).abs().max().item())
        print(f"seed {seed} done", flush=True)
    summary = {name: {"per_seed": values, "mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1))}
               for name, values in results.items()}
    out = Path(__file__).parent
    (out / "results.json").write_text(json.dumps({"seeds": list(SEEDS), "departures": summary}, indent=2))
    lines = ["| departure from the paper's code | max abs logit difference (mean ± sd, 3 seeds) |", "|---|---|"]
    lines += [f"| {name} | {s['mean']:.3g} ± {s['sd']:.2g} |" for name, s in summary.items()]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
