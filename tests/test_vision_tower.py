"""A model with a `vision_config` takes `pixel_values` through a frozen DINOv2 tower."""

import pytest
import torch

from modeling_gatedgpt import GatedGPT2ForCausalLM
from tests.conftest import IMAGE_DIM, tiny_model


VISION = dict(hidden_size=IMAGE_DIM, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48,
              image_size=28, patch_size=14)


@pytest.mark.parametrize("vision_feature, tokens", [("cls", 1), ("cls_patches", 5)])
def test_pixel_values_equal_their_embeddings(vision_feature, tokens, batch, tmp_path):
    model = tiny_model(vision_config=VISION, vision_feature=vision_feature)
    pixel_values = torch.randn(3, 3, 28, 28)
    embeds = model.transformer.get_image_features(pixel_values)
    assert embeds.shape == (3, tokens, IMAGE_DIM)
    with torch.no_grad():
        from_pixels = model(batch["input_ids"], pixel_values=pixel_values).logits
        from_embeds = model(batch["input_ids"], image_embeds=embeds).logits
    assert torch.equal(from_pixels, from_embeds)

    model.save_pretrained(tmp_path)
    reloaded = GatedGPT2ForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(batch["input_ids"], pixel_values=pixel_values).logits, from_pixels)


def test_vision_tower_is_frozen(batch):
    model = tiny_model(vision_config=VISION).train()
    assert not model.transformer.vision_tower.training
    assert not any(p.requires_grad for p in model.transformer.vision_tower.parameters())
    ids = batch["input_ids"]
    model(ids, pixel_values=torch.randn(3, 3, 28, 28), labels=ids).loss.backward()
    assert all(p.grad is None for p in model.transformer.vision_tower.parameters())
    assert model.transformer.image_encoder.proj.weight.grad is not None
