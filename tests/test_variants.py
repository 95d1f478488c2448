"""Every variant of the paper is a config value of one model: each trains, reads the image, and stays causal."""


import pytest
import torch

from tests.helpers.models import tiny_model
from tests.helpers.variants import AUX, GRID, MODULATIONS, grid_id


def assert_has_gradient(module, name):
    grads = [p.grad for p in module.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads), f"{name}: parameters without gradient"
    assert any(g.abs().sum() > 0 for g in grads), f"{name}: all gradients are zero"


@pytest.mark.parametrize("overrides", GRID, ids=grid_id)
@pytest.mark.parametrize("image_kind", ["global", "cls_patches"])
def test_forward_backward(overrides, image_kind, batch):
    model = tiny_model(**overrides).train()
    images = batch["image_global"] if image_kind == "global" else batch["image_tokens"]
    ids = batch["input_ids"]
    image_mask = torch.tensor([True, True, False])
    out = model(ids, image_embeds=images, image_mask=image_mask, labels=ids, output_gates=True)
    assert torch.isfinite(out.loss)
    if overrides.get("contrastive"):
        assert torch.isfinite(out.contrastive_loss) and out.contrastive_loss > 0
        assert torch.allclose(out.loss, out.lm_loss + model.config.contrastive_weight * out.contrastive_loss)
    out.loss.backward()

    for block in model.transformer.h:
        if block.gate is not None:
            assert_has_gradient(block.gate, "gate")
        cross = block.crossattention
        assert_has_gradient(cross.c_attn, "cross-attention keys/values")
        assert_has_gradient(cross.c_proj, "cross-attention output")
        if image_kind == "cls_patches":
            assert_has_gradient(cross.q_attn, "cross-attention queries")
        else:
            # One image token makes the cross-attention softmax exactly 1: no query is computed (documented).
            assert cross.q_attn.weight.grad is None
        if block.modulation is not None and block.gate is None and block.modulation_target == "text":
            # it modulates the query alone, which one image token makes irrelevant
            assert_has_gradient(block.modulation, "modulation") if image_kind == "cls_patches" else None
        elif block.modulation is not None:
            assert_has_gradient(block.modulation, "modulation")
    assert_has_gradient(model.transformer.image_encoder, "image encoder")

    expected_gates = 0 if overrides["gate"] == "none" else model.config.n_layer
    assert len(out.gates) == expected_gates
    for gate in out.gates:
        width = () if overrides["gate_granularity"] == "token" else (model.config.n_embd,)
        assert gate.shape == (*ids.shape, *width)
        assert torch.all(gate[2] == 1.0)  # the row without an image keeps all of its text


@pytest.mark.parametrize("overrides", [dict(), *MODULATIONS[1:], *AUX[1:]], ids=grid_id)
def test_no_future_token_leaks_into_the_past(overrides, batch):
    """Changing token t must leave the logits (and the gates) before t untouched, image conditioning included."""
    model = tiny_model(**overrides)
    ids = batch["input_ids"]
    changed = ids.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % model.config.vocab_size
    with torch.no_grad():
        a = model(ids, image_embeds=batch["image_tokens"], output_gates=True)
        b = model(changed, image_embeds=batch["image_tokens"], output_gates=True)
    assert torch.allclose(a.logits[:, :6], b.logits[:, :6], atol=1e-6)
    assert not torch.allclose(a.logits[:, 6:], b.logits[:, 6:])
    for gate_a, gate_b in zip(a.gates, b.gates):
        assert torch.allclose(gate_a[:, :6], gate_b[:, :6], atol=1e-6)


def test_image_changes_the_prediction(batch):
    model = tiny_model()
    with torch.no_grad():
        a = model(batch["input_ids"], image_embeds=batch["image_global"]).logits
        b = model(batch["input_ids"], image_embeds=batch["image_global"].flip(0)).logits
        text_only = model(batch["input_ids"]).logits
    assert not torch.allclose(a, b)
    assert not torch.allclose(a, text_only)


def test_cross_attention_layers_subset(batch):
    model = tiny_model(n_layer=3, cross_attention_layers=[2, 0])
    assert model.config.cross_attention_layers == [0, 2]
    assert [block.has_cross_attention for block in model.transformer.h] == [True, False, True]
    assert not any(".h.1.crossattention" in name for name, _ in model.named_parameters())
    out = model(batch["input_ids"], image_embeds=batch["image_global"], output_gates=True)
    assert len(out.gates) == 2


def test_image_encoder_layers_are_independently_initialised():
    layers = tiny_model(image_encoder_layers=3).transformer.image_encoder.layers
    weights = [layer.self_attn.c_attn.weight for layer in layers]
    assert not torch.equal(weights[0], weights[1]) and not torch.equal(weights[1], weights[2])


def test_modules_are_named_for_peft_and_hooks():
    names = {name for name, _ in tiny_model(gate="hard", modulation="film", channel_attention=True).named_modules()}
    assert {"transformer.h.0.gate", "transformer.h.0.crossattention", "transformer.h.0.modulation",
            "transformer.image_encoder", "transformer.image_encoder.channel_attention"} <= names
