"""Tiny GatedGPT2 models with fixed sizes, so that runs are comparable, and the tiny DINOv2 tower of the pixel tests."""

import torch

from modeling_gatedgpt import GatedGPT2Config, GatedGPT2ForCausalLM

VOCAB = 97

IMAGE_DIM = 24


def tiny_config(**overrides) -> GatedGPT2Config:
    """A 2-layer, 32-wide GatedGPT2 with dropout off, so that runs are comparable."""
    values = dict(
        vocab_size=VOCAB,
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_inner=64,
        image_embed_dim=IMAGE_DIM,
        image_encoder_layers=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    values.update(overrides)
    return GatedGPT2Config(**values)

def tiny_model(seed: int = 0, **overrides) -> GatedGPT2ForCausalLM:
    torch.manual_seed(seed)
    return GatedGPT2ForCausalLM(tiny_config(**overrides)).eval()


VISION = dict(hidden_size=IMAGE_DIM, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48,
              image_size=28, patch_size=14)
