"""Gate semantics and the auxiliary losses, checked against direct computations."""

import math

import pytest
import torch

from modeling_gatedgpt.configuration_gatedgpt import GatedGPT2Config
from tests.helpers.models import tiny_model


def test_hard_gate_is_deterministic_and_binary_at_inference(batch):
    model = tiny_model(gate="hard")
    inputs = dict(input_ids=batch["input_ids"], image_embeds=batch["image_tokens"], output_gates=True)
    with torch.no_grad():
        a, b = model(**inputs), model(**inputs)
    assert torch.equal(a.logits, b.logits)
    assert all(set(gate.unique().tolist()) <= {0.0, 1.0} for gate in a.gates)


def test_hard_gate_samples_in_training_with_straight_through(batch):
    model = tiny_model(gate="hard").train()
    model.set_gate_temperature(5.0)
    inputs = dict(input_ids=batch["input_ids"], image_embeds=batch["image_tokens"], output_gates=True)
    first, second = model(**inputs).gates[0], model(**inputs).gates[0]
    assert set(first.unique().tolist()) <= {0.0, 1.0}  # hard forward
    assert not torch.equal(first, second)  # a fresh Gumbel draw each step
    soft = tiny_model(gate="hard", gate_straight_through=False).train()
    gate = soft(**inputs).gates[0]
    assert ((gate > 0) & (gate < 1)).any()


def test_gate_temperature_schedule_and_setter():
    config = GatedGPT2Config(gate_temperature_start=1.0, gate_temperature_end=0.1, gate_temperature_steps=100)
    assert config.gate_temperature_at(0) == 1.0
    assert math.isclose(config.gate_temperature_at(50), math.sqrt(0.1))
    assert math.isclose(config.gate_temperature_at(1000), 0.1)
    linear = GatedGPT2Config(gate_temperature_steps=100, gate_temperature_schedule="linear")  # the paper's code
    assert [linear.gate_temperature_at(step) for step in (0, 50, 100, 1000)] == pytest.approx([1.0, 0.55, 0.1, 0.1])
    model = tiny_model(gate="hard")
    model.set_gate_temperature(0.5)
    assert all(float(block.gate.temperature) == 0.5 for block in model.transformer.h)
    with pytest.raises(ValueError, match="tau"):
        model.set_gate_temperature(0.0)


def test_soft_gate_formula(batch):
    """gates are sigmoid(W [LN(x); c] + b), and residual fusion adds (1 - g) * c."""
    model = tiny_model(fusion="residual", n_layer=1)
    block = model.transformer.h[0]
    captured = {}
    block.crossattention.register_forward_hook(lambda m, args, out: captured.update(text=args[0], cross=out[0]))
    with torch.no_grad():
        out = model(batch["input_ids"], image_embeds=batch["image_global"], output_gates=True)
    text, cross = captured["text"], captured["cross"]  # one image token: cross is (B, 1, D), the same at every position
    expected = torch.sigmoid(block.gate.proj(torch.cat([text, cross.expand_as(text)], -1)))
    assert torch.allclose(out.gates[0], expected, atol=1e-6)


def test_clip_loss_pools_over_real_tokens_only(batch):
    model = tiny_model(contrastive="clip")
    ids = batch["input_ids"].clone()
    attention_mask = torch.ones_like(ids)
    attention_mask[:, 6:] = 0
    with torch.no_grad():
        a = model(ids, attention_mask=attention_mask, image_embeds=batch["image_global"]).contrastive_loss
        ids[:, 6:] = 5  # different padding content
        b = model(ids, attention_mask=attention_mask, image_embeds=batch["image_global"]).contrastive_loss
    assert torch.equal(a, b)


def test_contrastive_losses_match_a_direct_computation(batch):
    for kind in ("clip", "lcg"):
        model = tiny_model(contrastive=kind)
        head = model.transformer.contrastive_head
        ids = batch["input_ids"]
        text_in = {}
        model.transformer.h[0].register_forward_pre_hook(lambda m, args: text_in.update(states=args[0]))
        with torch.no_grad():
            loss = model(ids, image_embeds=batch["image_tokens"]).contrastive_loss
            image = model.transformer.image_encoder(batch["image_tokens"]).mean(1)
            image = torch.nn.functional.normalize(head.image_projection(image), dim=-1)
            scale = head.logit_scale.exp()
            if kind == "clip":
                text = torch.nn.functional.normalize(head.text_projection(text_in["states"].mean(1)), dim=-1)
                logits = scale * text @ image.T
                expected = -(logits.log_softmax(1).diag().mean() + logits.log_softmax(0).diag().mean()) / 2
            else:  # mean over tokens of -log p(own image | token)
                tokens = torch.nn.functional.normalize(head.text_projection(text_in["states"]), dim=-1)
                log_p = (scale * tokens @ image.T).log_softmax(-1)  # (B, T, B)
                expected = -torch.stack([log_p[b, :, b] for b in range(3)]).mean()
        assert loss > 0
        assert torch.allclose(loss, expected, atol=1e-5), kind


def test_labels_use_minus_100_and_keep_token_zero(batch):
    model = tiny_model()
    ids = batch["input_ids"].clone()
    ids[:, 4] = 0  # token id 0 is a real token, never ignored
    labels = ids.clone()
    labels[:, :2] = -100
    with torch.no_grad():
        logits = model(ids).logits
        loss = model(ids, labels=labels).loss
    shifted = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
    assert torch.allclose(loss, shifted)


@pytest.mark.parametrize("contrastive", ["clip", "lcg"])
def test_contrastive_loss_is_zero_and_reaches_its_head_without_any_image_row(batch, contrastive):
    """A sharded run's placeholder images (image_mask all False) must run the head like any other batch: an exact 0
    that gives every head parameter a zero gradient (not none), so that every process reduces the same gradients."""
    model = tiny_model(contrastive=contrastive)
    ids = batch["input_ids"]
    out = model(ids, image_embeds=batch["image_global"], image_mask=torch.zeros(3, dtype=torch.bool), labels=ids)
    assert out.contrastive_loss == 0 and torch.equal(out.loss, out.lm_loss)
    out.loss.backward()
    head = model.transformer.contrastive_head
    assert all(p.grad is not None and not p.grad.any() for p in head.parameters())
    assert out.loss.isfinite() and all(p.grad is None or p.grad.isfinite().all() for p in model.parameters())
