import pytest
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


@pytest.fixture
def batch():
    """Token ids, a global image vector and a 1 + 4 token image set for 3 rows."""
    generator = torch.Generator().manual_seed(1)
    return {
        "input_ids": torch.randint(3, VOCAB, (3, 9), generator=generator),
        "image_global": torch.randn(3, IMAGE_DIM, generator=generator),
        "image_tokens": torch.randn(3, 5, IMAGE_DIM, generator=generator),
    }
