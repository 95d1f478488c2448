"""Convert a checkpoint of the paper's code ("Looking to Learn", github.com/biancaganescu/looking-to-learn, its
`DualStreamTransformer`) into a GatedGPT2 checkpoint with the `paper_code` preset, which computes the same function
(tests/test_paper_fidelity.py checks it against an independent port of the equations).

    python -m modeling_gatedgpt.convert_looking_to_learn --checkpoint best_model.pt --variant base --n-head 8 --out DIR

The checkpoint is a `torch.save`d state dict, or the training checkpoint dict that holds one as `model_state_dict`;
it is read with `weights_only=True`. Every parameter is mapped or the conversion stops naming it; the converted
model is saved (safetensors, config, code), reloaded, and must give the same logits on a probe input, with and
without an image, before the command reports success. `--variant` names the reference's model file
(`models/model_<variant>.py`, `base` for `model.py`); see `VARIANTS`, and `NOT_CONVERTIBLE` for those refused and why.
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
from pathlib import Path

import torch

from .configuration_gatedgpt import PAPER_VARIANTS, GatedGPT2Config
from .modeling_gatedgpt import GatedGPT2ForCausalLM

# The reference's variants whose function GatedGPT2 does not reproduce, and why (the others: `PAPER_VARIANTS`).
NOT_CONVERTIBLE = {
    "film_on_image": "the reference conditions the image tokens on the whole caption's mean, a future-token leak; "
                     "GatedGPT2 conditions them on h_t at each position",
    "dyintra_on_image": "the reference conditions the image tokens on the whole caption's mean, a future-token leak; "
                        "GatedGPT2 conditions them on h_t at each position",
}
VARIANTS = {name: fields for name, fields in PAPER_VARIANTS.items() if name not in NOT_CONVERTIBLE}


def load_reference_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    state = loaded.get("model_state_dict", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = list(loaded)[:8] if isinstance(loaded, dict) else []
        raise ValueError(f"{path}: expected a state dict of tensors (or a checkpoint dict with 'model_state_dict'), "
                         f"got {type(loaded).__name__} {keys}")
    return state


def _layer_count(state: dict, prefix: str) -> int:
    indices = {int(m.group(1)) for k in state if (m := re.match(rf"{re.escape(prefix)}\.(\d+)\.", k))}
    if indices != set(range(len(indices))):
        raise ValueError(f"layers under {prefix} are not numbered 0..N-1: {sorted(indices)}")
    return len(indices)


def config_for(state: dict, variant: str, n_head: int, **overrides) -> GatedGPT2Config:
    """The `paper_code` configuration of `variant` whose sizes are those of `state` (the number of heads is not in
    the weights)."""
    if variant in NOT_CONVERTIBLE:
        raise ValueError(f"--variant {variant}: {NOT_CONVERTIBLE[variant]}.")
    if variant not in VARIANTS:
        raise ValueError(f"--variant must be one of {sorted(VARIANTS)}, got {variant!r}.")
    vocab, width = state["text_embedding.token_embedding.weight"].shape
    projection = state.get("image_embedding.projection_layer.weight", state.get("image_embedding.proj.0.weight"))
    encoder_layers = _layer_count(state, "image_encoder.encoder.layers")
    if encoder_layers:
        overrides.setdefault("image_encoder_layers", encoder_layers)
    return GatedGPT2Config.from_preset(
        "paper_code", variant, vocab_size=vocab, n_embd=width, n_head=n_head,
        n_positions=state["text_embedding.position_embedding.weight"].shape[0],
        n_inner=state["decoder.layers.0.ff.0.weight"].shape[0], n_layer=_layer_count(state, "decoder.layers"),
        image_embed_dim=projection.shape[1], bos_token_id=None, eos_token_id=None, **overrides,
    )


def _attention(target: str, source: str, width: int, cross: bool) -> list[tuple[str, str, callable]]:
    """nn.MultiheadAttention (packed in-projection, Linear layout) -> GPT-2's Conv1D layout (transposed)."""
    def rows(start, stop):
        return lambda t: t[start * width:stop * width].T if t.dim() == 2 else t[start * width:stop * width]

    pairs = [(f"{target}.c_proj.weight", f"{source}.out_proj.weight", lambda t: t.T),
             (f"{target}.c_proj.bias", f"{source}.out_proj.bias", None)]
    if cross:
        return pairs + [(f"{target}.q_attn.{p}", f"{source}.in_proj_{p}", rows(0, 1)) for p in ("weight", "bias")] + [
            (f"{target}.c_attn.{p}", f"{source}.in_proj_{p}", rows(1, 3)) for p in ("weight", "bias")]
    return pairs + [(f"{target}.c_attn.{p}", f"{source}.in_proj_{p}", rows(0, 3)) for p in ("weight", "bias")]


def _linear(target: str, source: str, conv1d: bool) -> list[tuple[str, str, callable]]:
    return [(f"{target}.weight", f"{source}.weight", (lambda t: t.T) if conv1d else None),
            (f"{target}.bias", f"{source}.bias", None)]


def _norm(target: str, source: str) -> list[tuple[str, str, callable]]:
    return [(f"{target}.{p}", f"{source}.{p}", None) for p in ("weight", "bias")]


def _modulation(target: str, source: str, kind: str) -> list[tuple[str, str, callable]]:
    """The reference's FiLM is x * gamma(e) + beta(e) from two Linears; GatedGPT2's is (1 + gamma') x + beta' from
    one (rows [gamma'; beta']): gamma' is gamma - 1. DyIntra is the same on both sides."""
    if kind == "dyintra":
        return _linear(f"{target}.proj", f"{source}.dyIntra.modulation_gate", conv1d=False)
    return [(f"{target}.proj.weight", (f"{source}.film.gamma_fc.weight", f"{source}.film.beta_fc.weight"),
             lambda gamma, beta: torch.cat([gamma, beta])),
            (f"{target}.proj.bias", (f"{source}.film.gamma_fc.bias", f"{source}.film.beta_fc.bias"),
             lambda gamma, beta: torch.cat([gamma - 1, beta]))]


def parameter_map(config: GatedGPT2Config, state: dict) -> list[tuple[str, str | tuple, callable]]:
    """(GatedGPT2 name, reference name(s), transform or None) for every parameter of the configured variant."""
    width = config.n_embd
    pairs = [("transformer.wte.weight", "text_embedding.token_embedding.weight", None),
             ("transformer.wpe.weight", "text_embedding.position_embedding.weight", None),
             *_norm("transformer.ln_embd", "text_embedding.layer_norm"),
             *_linear("lm_head", "output_layer", conv1d=False)]
    if config.image_encoder == "mlp":
        pairs += [*_linear("transformer.image_encoder.proj.0", "image_embedding.proj.0", conv1d=False),
                  *_linear("transformer.image_encoder.proj.2", "image_embedding.proj.3", conv1d=False),
                  *_norm("transformer.image_encoder.ln_f", "image_embedding.layer_norm")]
    else:
        pairs += _linear("transformer.image_encoder.proj", "image_embedding.projection_layer", conv1d=False)
    if config.channel_attention:  # torchvision's SqueezeExcitation: 1x1 convolutions, i.e. Linear layers
        pairs += [(f"transformer.image_encoder.channel_attention.{ours}.weight", f"image_encoder.se.{theirs}.weight",
                   lambda t: t.flatten(1)) for ours, theirs in (("squeeze", "fc1"), ("excite", "fc2"))]
        pairs += [(f"transformer.image_encoder.channel_attention.{ours}.bias", f"image_encoder.se.{theirs}.bias", None)
                  for ours, theirs in (("squeeze", "fc1"), ("excite", "fc2"))]
    if config.contrastive == "clip":
        pairs += [*_linear("transformer.contrastive_head.text_projection", "text_projection", conv1d=False),
                  *_linear("transformer.contrastive_head.image_projection", "image_projection", conv1d=False),
                  ("transformer.contrastive_head.logit_scale", "log_tau", lambda t: -t)]
    elif config.contrastive == "lcg":  # LCGLoss: ML (text), MV (image) without bias, a raw temperature clamped in use
        bounds = (config.contrastive_temperature_min, config.contrastive_temperature_max)
        pairs += [("transformer.contrastive_head.text_projection.weight", "lcg_loss.ML.weight", None),
                  ("transformer.contrastive_head.image_projection.weight", "lcg_loss.MV.weight", None),
                  ("transformer.contrastive_head.logit_scale", "lcg_loss.tau", lambda t: -t.clamp(*bounds).log()[0])]
    for i in range(config.image_encoder_layers if config.image_encoder == "transformer" else 0):
        ours, theirs = f"transformer.image_encoder.layers.{i}", f"image_encoder.encoder.layers.{i}"
        pairs += [*_attention(f"{ours}.self_attn", f"{theirs}.self_attn", width, cross=False),
                  *_linear(f"{ours}.mlp.c_fc", f"{theirs}.linear1", conv1d=True),
                  *_linear(f"{ours}.mlp.c_proj", f"{theirs}.linear2", conv1d=True),
                  *_norm(f"{ours}.ln_1", f"{theirs}.norm1"), *_norm(f"{ours}.ln_2", f"{theirs}.norm2")]
    for i in range(config.n_layer):
        ours, theirs = f"transformer.h.{i}", f"decoder.layers.{i}"
        pairs += [*_attention(f"{ours}.attn", f"{theirs}.self_attn", width, cross=False),
                  *_norm(f"{ours}.ln_1", f"{theirs}.norm1"), *_norm(f"{ours}.ln_2", f"{theirs}.norm3"),
                  *_linear(f"{ours}.mlp.c_fc", f"{theirs}.ff.0", conv1d=True),
                  *_linear(f"{ours}.mlp.c_proj", f"{theirs}.ff.3", conv1d=True)]
        if i not in config.cross_attention_layer_indices:
            continue
        pairs += [*_attention(f"{ours}.crossattention", f"{theirs}.cross_attn_txt_image", width, cross=True),
                  *_norm(f"{ours}.ln_cross_attn", f"{theirs}.norm2")]
        if config.gate != "none":
            # the base and gate files name the gate's Linear gate_fc, the others gate
            gate = "gate_fc" if f"{theirs}.gate.gate_fc.weight" in state else "gate"
            pairs += [*_linear(f"{ours}.gate.proj", f"{theirs}.gate.{gate}", conv1d=False),
                      *_norm(f"{ours}.ln_fused", f"{theirs}.gate.layer_norm")]
        if config.modulation is not None:
            pairs += _modulation(f"{ours}.modulation", theirs, config.modulation)
    return pairs


def unused_parameters(config: GatedGPT2Config, state: dict) -> list[str]:
    """The reference's parameters that its forward pass never reads: the cross-attention, its LayerNorm and the gate
    of the layers that do not cross-attend (the LCG file builds them in layer 0 and skips them)."""
    skipped = [i for i in range(config.n_layer) if i not in config.cross_attention_layer_indices]
    parts = ("cross_attn_txt_image.", "norm2.", "gate.", "film.", "dyIntra.")
    return sorted(k for k in state for i in skipped for part in parts if k.startswith(f"decoder.layers.{i}.{part}"))


def convert_state_dict(state: dict, model: GatedGPT2ForCausalLM) -> dict[str, torch.Tensor]:
    """`model`'s weights from the reference's; an unmapped, missing or misshapen parameter is an error naming it.
    Parameters the reference never reads (`unused_parameters`) are left out."""
    config = model.config
    pairs = parameter_map(config, state)
    sources = {name for _, source, _ in pairs for name in (source if isinstance(source, tuple) else (source,))}
    unused = set(unused_parameters(config, state))
    missing, unmapped = sorted(sources - set(state)), sorted(set(state) - sources - unused)
    if config.tie_word_embeddings and not missing and not torch.equal(
            state["output_layer.weight"], state["text_embedding.token_embedding.weight"]):
        raise ValueError("this variant ties output_layer.weight to text_embedding.token_embedding.weight, but the "
                         "checkpoint's two differ")
    if missing or unmapped:
        raise ValueError(f"the checkpoint does not match a {model.config.n_layer}-layer model of this variant: "
                         f"missing {missing}, not mapped {unmapped}")
    converted = {}
    for target, source, transform in pairs:
        tensors = [state[name] for name in (source if isinstance(source, tuple) else (source,))]
        converted[target] = (transform(*tensors) if transform else tensors[0]).contiguous().clone()
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    wrong = {n: (tuple(t.shape), expected.get(n)) for n, t in converted.items() if tuple(t.shape) != expected.get(n)}
    absent = sorted(set(expected) - set(converted) - {name for name, _ in model.named_buffers()})
    if wrong or absent:
        raise ValueError(f"converted weights do not fit GatedGPT2: shapes (got, expected) {wrong}, unset {absent}")
    return converted


def convert(checkpoint: str | Path, variant: str, n_head: int, out: str | Path) -> GatedGPT2ForCausalLM:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"--out {out} is not empty; choose a new folder")
    state = load_reference_state_dict(checkpoint)
    model = GatedGPT2ForCausalLM(config_for(state, variant, n_head)).eval()
    model.load_state_dict(convert_state_dict(state, model), strict=False)  # strict: checked above, buffers aside
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))  # out appears only once verified
    try:
        model.save_pretrained(staging)
        _verify_reload(model, staging)
        staging.replace(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return model


def _verify_reload(model: GatedGPT2ForCausalLM, folder: str) -> None:
    """The saved folder must compute what the converted model computes, with and without an image."""
    generator = torch.Generator().manual_seed(0)
    config = model.config
    ids = torch.randint(0, config.vocab_size, (2, min(8, config.n_positions)), generator=generator)
    image = torch.randn(2, config.image_embed_dim, generator=generator)
    reloaded = GatedGPT2ForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        for kwargs in ({}, {"image_embeds": image}):
            before, after = model(ids, **kwargs).logits, reloaded(ids, **kwargs).logits
            if not torch.isfinite(before).all() or not torch.equal(before, after):
                raise RuntimeError(f"the saved checkpoint does not reproduce the converted model ({sorted(kwargs)})")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="the authors' .pt file")
    parser.add_argument("--variant", required=True, choices=sorted([*VARIANTS, *NOT_CONVERTIBLE]),
                        help="the reference's models/model_<variant>.py (base: model.py)")
    parser.add_argument("--n-head", type=int, required=True, help="attention heads, which the weights do not record "
                        "(the reference's defaults: 8, and 6 in mlp_encoder)")
    parser.add_argument("--out", required=True, help="a new folder for the GatedGPT2 checkpoint")
    args = parser.parse_args(argv)
    model = convert(args.checkpoint, args.variant, args.n_head, args.out)
    print(f"Converted {args.checkpoint} ({model.num_parameters() / 1e6:.2f} M parameters) to {args.out}")
    unused = unused_parameters(model.config, load_reference_state_dict(args.checkpoint))
    if unused:
        print(f"Left out {len(unused)} parameters the reference's forward pass never reads: {', '.join(unused)}")


if __name__ == "__main__":
    main()
