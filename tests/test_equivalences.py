"""Correctness by comparison: mixed vs separate batches, eager vs SDPA, cached vs uncached, checkpointed vs not."""

import pytest
import torch

from tests.helpers.models import IMAGE_DIM, tiny_model

VARIANTS = [
    dict(),
    dict(gate="hard", gate_granularity="token", fusion="residual"),
    dict(gate="none", image_encoder="mlp"),
    dict(modulation="film", modulation_target="image"),
    dict(modulation="dyintra", modulation_target="text", channel_attention=True),
    dict(modulation="film", modulation_target="cross_attn", contrastive="clip"),
]


def variant_id(overrides):
    return "-".join(str(v) for v in overrides.values()) or "base"


@pytest.mark.parametrize("overrides", VARIANTS, ids=variant_id)
def test_text_only_row_in_mixed_batch_equals_text_only_alone(overrides, batch):
    model = tiny_model(**overrides)
    ids = batch["input_ids"]
    images = batch["image_tokens"].clone()
    images[1] = float("nan")  # a placeholder in the row without an image must not matter
    with torch.no_grad():
        mixed = model(ids, image_embeds=images, image_mask=torch.tensor([True, False, True])).logits
        alone = model(ids[1:2]).logits
        with_image = model(ids[0:1], image_embeds=images[0:1]).logits
    assert (mixed[1] - alone[0]).abs().max() <= 1e-6
    assert (mixed[0] - with_image[0]).abs().max() <= 1e-5


def test_text_only_rows_send_no_gradient_to_the_image_path(batch):
    model = tiny_model().train()
    ids = batch["input_ids"]
    labels = ids.clone()
    labels[0] = -100  # only the text-only row is scored
    loss = model(ids, image_embeds=batch["image_global"], image_mask=torch.tensor([True, False, False]),
                 labels=labels).loss
    loss.backward()
    for name, parameter in model.named_parameters():
        if "crossattention" in name or "image_encoder" in name or ".gate." in name:
            assert parameter.grad is None or parameter.grad.abs().max() == 0, name


@pytest.mark.parametrize("overrides", VARIANTS, ids=variant_id)
def test_eager_and_sdpa_agree(overrides, batch):
    eager = tiny_model(**overrides)
    eager.set_attn_implementation("eager")
    sdpa = tiny_model(**overrides)
    sdpa.set_attn_implementation("sdpa")
    attention_mask = torch.ones_like(batch["input_ids"])
    attention_mask[0, :2] = 0
    image_attention_mask = torch.ones(3, 5, dtype=torch.long)
    image_attention_mask[2, 3:] = 0
    inputs = dict(
        input_ids=batch["input_ids"], attention_mask=attention_mask, image_embeds=batch["image_tokens"],
        image_attention_mask=image_attention_mask, image_mask=torch.tensor([True, False, True]),
    )
    with torch.no_grad():
        a = eager(**inputs, output_attentions=True)
        b = sdpa(**inputs)
    valid = attention_mask.bool()
    assert (a.logits - b.logits)[valid].abs().max() <= 1e-5
    # eager returns the weights: causal self-attention, and no weight on padded image tokens
    assert len(a.attentions) == len(a.cross_attentions) == 2
    assert a.attentions[0].shape == (3, 4, 9, 9)
    assert torch.all(a.attentions[0][1:].triu(1) == 0)  # row 0's padded queries attend uniformly, as in GPT-2
    assert a.cross_attentions[0].shape == (3, 4, 9, 5)
    assert torch.all(a.cross_attentions[0][2, :, :, 3:] == 0)
    assert torch.allclose(a.cross_attentions[0].sum(-1), torch.ones(3, 4, 9))


@pytest.mark.parametrize("overrides", VARIANTS, ids=variant_id)
def test_cached_and_uncached_generation_agree(overrides):
    model = tiny_model(**overrides)
    torch.manual_seed(3)
    prompts = torch.randint(3, model.config.vocab_size, (3, 5))
    attention_mask = torch.ones_like(prompts)
    attention_mask[1, :2] = 0  # left padding
    images = torch.randn(3, 4, IMAGE_DIM)
    kwargs = dict(
        attention_mask=attention_mask, image_embeds=images, image_mask=torch.tensor([True, True, False]),
        max_new_tokens=12, do_sample=False, pad_token_id=2,
    )
    cached = model.generate(prompts, use_cache=True, **kwargs)
    uncached = model.generate(prompts, use_cache=False, **kwargs)
    assert cached.shape == (3, 17)
    assert torch.equal(cached, uncached)
    # the image steers generation; the text-only row ignores it
    def scores(images):
        return torch.stack(model.generate(
            prompts, use_cache=True, output_scores=True, return_dict_in_generate=True,
            **{**kwargs, "image_embeds": images}).scores)
    changed = scores(images) - scores(torch.randn_like(images))
    assert changed[:, :2].abs().max() > 1e-4 and changed[:, 2].abs().max() == 0


def test_generation_computes_image_keys_values_once(batch):
    model = tiny_model()
    calls = []
    model.transformer.image_encoder.register_forward_hook(lambda *args: calls.append(1))
    model.generate(batch["input_ids"][:1], image_embeds=batch["image_global"][:1], max_new_tokens=6, do_sample=False)
    assert len(calls) == 1


@pytest.mark.parametrize("use_reentrant", [False, True])
@pytest.mark.parametrize("overrides", [dict(modulation="film", modulation_target="image", contrastive="lcg"),
                                       dict(modulation="dyintra", modulation_target="text")], ids=variant_id)
def test_gradient_checkpointing_gives_the_same_gradients(overrides, use_reentrant, batch):
    def gradients(checkpointing):
        model = tiny_model(**overrides).train()
        if checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": use_reentrant})
            assert all(block.gradient_checkpointing for block in model.transformer.h)
        ids = batch["input_ids"]
        out = model(ids, image_embeds=batch["image_tokens"], image_mask=torch.tensor([True, False, True]), labels=ids)
        out.loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = gradients(False), gradients(True)
    assert plain.keys() == checkpointed.keys()
    assert any("image_encoder" in name for name in plain)
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-6), name


@pytest.mark.parametrize("decoding", [dict(num_beams=3), dict(num_beams=2, num_return_sequences=2),
                                      dict(do_sample=True, num_return_sequences=3)], ids=str)
def test_beam_search_and_sampling_expand_the_image_inputs(decoding):
    """generate() repeats image_embeds/image_mask per beam or sample and reorders the cross-attention cache."""
    model = tiny_model()
    prompts, images = torch.randint(3, 90, (2, 5)), torch.randn(2, 5, IMAGE_DIM)
    kwargs = dict(image_embeds=images, image_mask=torch.tensor([True, False]), max_new_tokens=6, pad_token_id=2,
                  **decoding)
    torch.manual_seed(0)
    cached = model.generate(prompts, **kwargs)
    torch.manual_seed(0)
    uncached = model.generate(prompts, use_cache=False, **kwargs)
    assert cached.shape == (2 * decoding.get("num_return_sequences", 1), 11)
    assert torch.equal(cached, uncached)
