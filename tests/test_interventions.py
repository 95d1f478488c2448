"""Knockout and activation patching: exact equivalences on tiny models."""

import pytest
import torch

from modeling_gatedgpt import knockout, patch_image_path, record_image_path
from tests.helpers.models import tiny_model


@pytest.fixture
def inputs(batch):
    return dict(input_ids=batch["input_ids"], image_embeds=batch["image_tokens"])


def logits(model, **inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("overrides", [{}, {"gate": "hard", "gate_granularity": "token"}, {"gate": "none"},
                                       {"modulation": "dyintra", "modulation_target": "image"}])
def test_knocking_out_every_image_token_equals_no_image(inputs, attn, overrides):
    model = tiny_model(attn_implementation=attn, **overrides)
    blind = logits(model, **inputs, image_mask=torch.zeros(3, dtype=torch.bool))
    for renormalise in (False, True):
        with knockout(model, torch.ones(5, dtype=torch.bool), renormalise=renormalise):
            knocked = logits(model, **inputs)
        torch.testing.assert_close(knocked, blind, rtol=0, atol=0)
        assert not knocked.isnan().any()


def test_no_intervention_is_the_plain_forward_and_hooks_leave_nothing_behind(inputs):
    model = tiny_model()
    plain = logits(model, **inputs)
    with knockout(model, torch.zeros(5, dtype=torch.bool)):
        assert torch.equal(logits(model, **inputs), plain)
    with knockout(model, torch.zeros(5, dtype=torch.bool), renormalise=True):
        assert torch.equal(logits(model, **inputs), plain)
    with record_image_path(model) as recorded:
        assert torch.equal(logits(model, **inputs), plain)
    with patch_image_path(model, recorded, where=("encoder", 0, 1)):  # patching a run with itself
        assert torch.equal(logits(model, **inputs), plain)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_zeroing_post_softmax_weights_and_renormalising_differ_as_defined(inputs):
    """Zeroed weights = the attention output without those tokens' terms; renormalised = the tokens were never there."""
    model = tiny_model(image_encoder="linear")
    knocked = torch.tensor([True, False, False, True, False])
    with knockout(model, knocked, renormalise=True):
        renormalised = logits(model, **inputs)
    kept = inputs["image_embeds"][:, ~knocked]  # a linear encoder treats tokens independently
    torch.testing.assert_close(renormalised, logits(model, input_ids=inputs["input_ids"], image_embeds=kept))

    model.config._attn_implementation = "eager"
    weights = {}
    hooks = [b.crossattention.register_forward_hook(lambda m, a, out, i=i: weights.__setitem__(i, out[1]))
             for i, b in enumerate(model.transformer.h)]
    with knockout(model, knocked):
        zeroed = logits(model, **inputs)
    for hook in hooks:
        hook.remove()
    assert not torch.allclose(zeroed, renormalised)

    def zero_knocked_values(module, args, out):  # the definition: the knocked tokens' values are zero
        key, value = out.chunk(2, dim=-1)
        return torch.cat([key, value.masked_fill(knocked[:, None], 0.0)], dim=-1)

    hooks = [b.crossattention.c_attn.register_forward_hook(zero_knocked_values) for b in model.transformer.h]
    torch.testing.assert_close(zeroed, logits(model, **inputs))
    for hook in hooks:
        hook.remove()
    assert weights[0][..., knocked].sum() > 0  # the softmax still includes them: their weight is simply wasted


def test_knockout_of_chosen_layers_and_rows(inputs):
    model = tiny_model()
    per_row = torch.zeros(3, 5, dtype=torch.bool)
    per_row[1] = True  # row 1 loses its image entirely, rows 0 and 2 keep theirs
    with knockout(model, per_row):
        knocked = logits(model, **inputs)
    plain = logits(model, **inputs)
    blind = logits(model, **inputs, image_mask=torch.tensor([True, False, True]))
    torch.testing.assert_close(knocked, blind, rtol=0, atol=0)
    assert not torch.equal(knocked[1], plain[1])

    with knockout(model, torch.ones(5, dtype=torch.bool), layers=[1]):
        layer_1_only = logits(model, **inputs)
    assert not torch.equal(layer_1_only, plain) and not torch.equal(layer_1_only, blind)
    with pytest.raises(ValueError, match=r"layers \[5\] have no cross-attention"):
        with knockout(model, per_row, layers=[5]):
            pass
    with pytest.raises(ValueError, match=r"`knocked` has shape \(4,\)"):
        with knockout(model, torch.ones(4, dtype=torch.bool)):
            logits(model, **inputs)


def test_knockout_persists_through_the_cross_attention_cache(inputs):
    model = tiny_model()
    knocked = torch.tensor([True, True, False, False, False])
    prompt = dict(input_ids=inputs["input_ids"][:, :4], image_embeds=inputs["image_embeds"])
    with knockout(model, knocked), torch.no_grad():
        cached = model.generate(**prompt, max_new_tokens=4, do_sample=False)
        uncached = model.generate(**prompt, max_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("where", [("encoder",), (0,), (0, 1)])
def test_patching_carries_the_target_image_into_the_base_run(inputs, where):
    model = tiny_model()
    base, target = inputs["image_embeds"], inputs["image_embeds"].roll(1, dims=0)
    with record_image_path(model) as recorded:
        with_target = logits(model, input_ids=inputs["input_ids"], image_embeds=target)
    with patch_image_path(model, recorded, where=where):
        patched = logits(model, input_ids=inputs["input_ids"], image_embeds=base)
    plain = logits(model, input_ids=inputs["input_ids"], image_embeds=base)
    if where == (0, 1) or where == ("encoder",):  # every layer reads the target's image
        torch.testing.assert_close(patched, with_target)
    else:
        assert not torch.allclose(patched, with_target) and not torch.allclose(patched, plain)
    rows = torch.tensor([True, False, True])
    with patch_image_path(model, recorded, where=("encoder",), rows=rows):
        some = logits(model, input_ids=inputs["input_ids"], image_embeds=base)
    torch.testing.assert_close(some[rows], with_target[rows])
    torch.testing.assert_close(some[~rows], plain[~rows])


def test_the_narrow_gate_report_on_a_world_model(tiny_world, tmp_path):
    """Every analysis runs end to end; the numbers obey their definitions."""
    import json

    from gatedgpt2.data import ImageEmbeddings, train_tokenizer
    from gatedgpt2.eval.interpret.narrow_gate import narrow_gate_report

    lines = (tiny_world / "text" / "train" / "world.train").read_text().splitlines()
    tokenizer = train_tokenizer(lines, vocab_size=150, model_max_length=64)
    model = tiny_model(vocab_size=len(tokenizer), n_positions=64, image_embed_dim=32, initializer_range=0.3)
    images = ImageEmbeddings.load(tiny_world / "eval" / "images" / "cls_patches.npy")
    report = narrow_gate_report(model, tokenizer, tiny_world / "eval", images, tmp_path, seeds=2, max_pairs=12)

    for layer in report["attention_profile"].values():
        assert layer["cls"] + layer["patches"] == pytest.approx(1.0)
        assert 0 <= layer["max_patch"] <= 1 and 0 <= layer["cls_gate_weighted"] <= 1
    for layer in report["modality_gap"].values():
        assert 0 <= layer["q1"] <= layer["median_abs_cos"] <= layer["q3"] <= 1 and 0 <= layer["homogeneity"] <= 1
    zeroed = report["knockout"]["zeroed"]
    assert set(zeroed) == {"none", "cls", "patches", "random_1"} and set(zeroed["none"]) == {"vqa", "winoground"}
    assert report["knockout"]["renormalised"]["none"] == zeroed["none"]
    patching = report["patching"]
    last = max(report["attention_profile"])
    # the image path entirely from the target: the next-token distribution is the target's
    assert patching["encoder"]["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert patching[f"layers_0-{last}"]["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert patching["encoder"]["pairs"] == 12
    assert json.loads((tmp_path / "narrow_gate.json").read_text())["knockout"] == report["knockout"]
    assert (tmp_path / "attention_profile.png").stat().st_size > 0
    assert "| cls |" in (tmp_path / "knockout.md").read_text()
