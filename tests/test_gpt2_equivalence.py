"""The text stream is GPT-2: same weights, same logits; `from_gpt2` starts as the GPT-2 it came from."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from modeling_gatedgpt import GatedGPT2ForCausalLM
from tests.helpers.models import IMAGE_DIM, VOCAB, tiny_model


def gpt2_with_text_weights_of(model: GatedGPT2ForCausalLM) -> GPT2LMHeadModel:
    c = model.config
    gpt2 = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=c.vocab_size, n_positions=c.n_positions, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head,
            n_inner=c.n_inner, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=1,
        )
    ).eval()
    missing, unexpected = gpt2.load_state_dict(model.state_dict(), strict=False)
    assert not missing, missing
    assert unexpected  # the image path, which GPT-2 does not have
    return gpt2


def random_gpt2(seed=0, **overrides) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    values = dict(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=3, n_head=4, n_inner=64, resid_pdrop=0.0,
                  embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=1)
    values.update(overrides)
    return GPT2LMHeadModel(GPT2Config(**values)).eval()


@pytest.mark.parametrize("fusion", ["paper", "residual"])
@pytest.mark.parametrize("gate", ["soft", "hard", "none"])
def test_text_only_logits_match_gpt2(fusion, gate, batch):
    model = tiny_model(fusion=fusion, gate=gate)
    gpt2 = gpt2_with_text_weights_of(model)
    attention_mask = torch.ones_like(batch["input_ids"])
    attention_mask[1, :3] = 0  # a left-padded row
    # GPT-2 numbers positions from the padded start unless told; ours counts real tokens (see
    # test_left_padding_changes_nothing): given those positions, GPT-2 computes what we do.
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ours = model(batch["input_ids"], attention_mask=attention_mask).logits
        reference = gpt2(batch["input_ids"], attention_mask=attention_mask, position_ids=positions).logits
        unpadded = gpt2(batch["input_ids"][1:2, 3:]).logits
    # Padding positions have nothing to attend to; what they output is ignored and differs between releases (and
    # torch versions) of GPT-2 itself, so only real tokens are compared.
    real = attention_mask.bool()
    assert (ours - reference)[real].abs().max() <= 1e-5
    assert (ours[1, 3:] - unpadded[0]).abs().max() <= 1e-5


def test_from_gpt2_computes_what_gpt2_computes_with_and_without_image():
    gpt2 = random_gpt2()
    ids = torch.randint(3, VOCAB, (2, 11))
    for overrides in [
        dict(image_embed_dim=IMAGE_DIM, image_encoder_layers=1),
        dict(image_embed_dim=IMAGE_DIM, image_encoder_layers=1, fusion="residual", gate="hard"),
        dict(image_embed_dim=IMAGE_DIM, image_encoder="mlp", gate="none"),
        dict(image_embed_dim=IMAGE_DIM, image_encoder="linear", modulation="film", modulation_target="cross_attn",
             fusion="residual"),
    ]:
        model = GatedGPT2ForCausalLM.from_gpt2(gpt2, **overrides).eval()
        with torch.no_grad():
            reference = gpt2(ids).logits
            assert (model(ids).logits - reference).abs().max() <= 1e-5
            images = torch.randn(2, 5, IMAGE_DIM)
            assert (model(ids, image_embeds=images).logits - reference).abs().max() <= 1e-5


def test_from_gpt2_round_trips(tmp_path):
    gpt2 = random_gpt2(n_layer=2)
    model = GatedGPT2ForCausalLM.from_gpt2(gpt2, image_embed_dim=IMAGE_DIM, image_encoder_layers=1)
    ours = model.state_dict()
    for name, tensor in gpt2.state_dict().items():
        if not name.endswith(".attn.bias"):
            assert torch.equal(ours[name], tensor), name
    # the text weights go back into a GPT-2 unchanged, and a save/load keeps everything
    returned = gpt2_with_text_weights_of(model)
    assert torch.equal(returned.transformer.h[1].mlp.c_fc.weight, gpt2.transformer.h[1].mlp.c_fc.weight)
    model.save_pretrained(tmp_path)
    reloaded = GatedGPT2ForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(3, VOCAB, (2, 7))
    images = torch.randn(2, IMAGE_DIM)
    with torch.no_grad():
        assert torch.equal(reloaded(ids, image_embeds=images).logits, model.eval()(ids, image_embeds=images).logits)


def test_from_gpt2_image_path_learns():
    """The silent start must not be a dead start: one step opens the image path."""
    model = GatedGPT2ForCausalLM.from_gpt2(random_gpt2(n_layer=2), image_embed_dim=IMAGE_DIM, image_encoder_layers=1)
    model.train()
    ids = torch.randint(3, VOCAB, (4, 8))
    model(ids, image_embeds=torch.randn(4, 3, IMAGE_DIM), labels=ids).loss.backward()
    assert model.transformer.h[0].ln_fused.weight.grad.abs().sum() > 0


def test_from_gpt2_refuses_to_override_text_fields():
    clash = r"\['n_embd'\] are fixed by the GPT-2 checkpoint .* \(checkpoint: \[32\], given: \[64\]\)"
    with pytest.raises(ValueError, match=clash):
        GatedGPT2ForCausalLM.from_gpt2(random_gpt2(), n_embd=64, n_layer=3)  # an equal value is no clash
    model = GatedGPT2ForCausalLM.from_gpt2(random_gpt2(), n_embd=32, resid_pdrop=0.3)  # dropout is the run's choice
    assert model.config.resid_pdrop == 0.3


@pytest.mark.parametrize("overrides", [
    {},
    dict(gate="hard", gate_granularity="token", fusion="residual"),
    dict(modulation="film", modulation_target="text", channel_attention=True),
    dict(modulation="dyintra", modulation_target="image", image_encoder="mlp", contrastive="clip"),
])
def test_to_gpt2_is_the_text_stream_and_from_gpt2_takes_it_back(overrides, batch):
    model = tiny_model(**overrides).eval()
    gpt2 = model.to_gpt2()
    assert type(gpt2) is GPT2LMHeadModel and not gpt2.training
    with torch.no_grad():
        assert (gpt2(batch["input_ids"]).logits - model(batch["input_ids"]).logits).abs().max() <= 1e-5
    regrown = GatedGPT2ForCausalLM.from_gpt2(gpt2, image_embed_dim=IMAGE_DIM, image_encoder_layers=1)
    ours = model.state_dict()
    for name, tensor in regrown.state_dict().items():
        if name in gpt2.state_dict() and not name.endswith(".attn.bias"):
            assert torch.equal(ours[name], tensor), name


def test_gelu_new_is_one_fused_kernel_computing_gpt2s_activation():
    """GPT-2's `gelu_new` runs as torch's tanh GELU (one kernel instead of transformers' five); values and gradients
    are GPT-2's to float32 rounding. The paper_code preset's exact GELU is untouched."""
    from transformers.activations import ACT2FN

    from modeling_gatedgpt.layers import activation

    model = tiny_model()
    assert {type(m.act) for m in model.modules() if hasattr(m, "act")} == {torch.nn.GELU}
    assert all(m.act.approximate == "tanh" for m in model.modules() if hasattr(m, "act"))
    x = (torch.randn(200_000) * 4).requires_grad_()
    ours, reference = activation("gelu_new")(x), ACT2FN["gelu_new"](x)
    torch.testing.assert_close(ours, reference, atol=2e-6, rtol=0)
    (grad_ours,), (grad_reference,) = (torch.autograd.grad(y.sum(), x) for y in (ours, reference))
    torch.testing.assert_close(grad_ours, grad_reference, atol=5e-6, rtol=0)
    assert type(activation("gelu")) is type(ACT2FN["gelu"])
