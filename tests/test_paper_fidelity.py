"""Where GatedGPT2 follows the paper's code ("Looking to Learn", biancaganescu/looking-to-learn at 15a9c6e): the
variant fixes, checked against the equations written out here, and checkpoints saved before each fix keeping their
function (tests/fixtures/legacy_0_1, saved by commit 9d10a3d with make_fixture.py beside it)."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from modeling_gatedgpt import GatedGPT2Config, GatedGPT2ForCausalLM
from modeling_gatedgpt.configuration_gatedgpt import PAPER_VARIANTS, PRESETS
from modeling_gatedgpt.convert_looking_to_learn import VARIANTS as CONVERTED
from modeling_gatedgpt.convert_looking_to_learn import main as convert_main
from tests.helpers import looking_to_learn_port as port
from tests.helpers.models import tiny_model

LEGACY = Path(__file__).parent / "fixtures" / "legacy_0_1"


@pytest.mark.parametrize("name", sorted(p.name for p in LEGACY.iterdir() if p.is_dir()))
def test_a_checkpoint_saved_before_the_fixes_computes_what_it_computed(name):
    model = GatedGPT2ForCausalLM.from_pretrained(LEGACY / name).eval()
    expected = load_file(LEGACY / name / "expected.safetensors")
    with torch.no_grad():
        logits = model(expected["input_ids"], image_embeds=expected["image_tokens"]).logits
    torch.testing.assert_close(logits, expected["logits"], rtol=0, atol=1e-6)
    config = model.config
    assert config.image_encoder_has_final_norm == (config.image_encoder == "transformer")
    assert config.cross_attn_modulation_condition == "text" and config.modulated_text_queries_image
    if config.image_encoder == "mlp":
        assert config.image_encoder_dropout_rate == 0.0


@pytest.mark.parametrize("kind", ["film", "dyintra"])
def test_modulation_of_the_text_feeds_the_gate_and_the_image_is_queried_with_h(kind, batch):
    """As the paper's code: FiLM/DyIntra of h changes the gate's text input, while the cross-attention query stays
    h = LN(x). With CLS + patch tokens the query matters (one token would make the softmax trivially 1)."""
    model = tiny_model(modulation=kind, modulation_target="text").eval()
    normalised, queries, modulated, gate_inputs = [], [], [], []
    block = model.transformer.h[0]
    block.ln_cross_attn.register_forward_hook(lambda m, args, out: normalised.append(out))
    block.crossattention.register_forward_hook(lambda m, args, out: queries.append(args[0]))
    block.modulation.register_forward_hook(lambda m, args, out: modulated.append(out))
    block.gate.register_forward_hook(lambda m, args, out: gate_inputs.append(args[0]))
    with torch.no_grad():
        model(batch["input_ids"], image_embeds=batch["image_tokens"])
    torch.testing.assert_close(queries[0], normalised[0], rtol=0, atol=0)
    torch.testing.assert_close(gate_inputs[0], modulated[0], rtol=0, atol=0)
    assert not torch.allclose(modulated[0], normalised[0])


def test_a_new_configuration_saves_every_field_so_it_is_never_taken_for_a_legacy_one(tmp_path):
    GatedGPT2Config(image_encoder="mlp").save_pretrained(tmp_path)
    config = GatedGPT2Config.from_pretrained(tmp_path)
    assert config.image_encoder_has_final_norm and config.cross_attn_modulation_condition == "image"
    assert config.image_encoder_dropout_rate == config.resid_pdrop


def test_the_mlp_image_encoder_is_the_papers(batch):
    """Linear-GELU-Dropout-Linear-Dropout-LayerNorm (exact GELU), per image token."""
    model = tiny_model(image_encoder="mlp", resid_pdrop=0.5).eval()
    encoder = model.transformer.image_encoder
    first, second, norm = encoder.proj[0], encoder.proj[2], encoder.ln_f
    images = batch["image_tokens"]
    with torch.no_grad():
        hidden = F.gelu(images @ first.weight.T + first.bias)
        expected = F.layer_norm(hidden @ second.weight.T + second.bias, (second.out_features,), norm.weight,
                                norm.bias, model.config.layer_norm_epsilon)
        torch.testing.assert_close(encoder(images), expected, rtol=1e-5, atol=1e-6)
        encoder.train()
        torch.manual_seed(0)
        dropped = encoder(images)
        assert not torch.allclose(dropped, expected, atol=1e-3)  # its dropout acts in training
    assert sorted(name for name, _ in encoder.named_parameters()) == [
        "ln_f.bias", "ln_f.weight", "proj.0.bias", "proj.0.weight", "proj.2.bias", "proj.2.weight"]


@pytest.mark.parametrize("kind", ["film", "dyintra"])
def test_modulation_of_the_cross_attention_is_conditioned_on_the_image(kind, batch):
    """As the paper's code: the cross-attention output c of every text position is modulated by the (pooled) encoded
    image tokens, FiLM (1 + gamma(e)) * c + beta(e), DyIntra c * (1 + sigmoid(W e)); not by the text state."""
    model = tiny_model(modulation=kind, modulation_target="cross_attn").eval()
    seen = []
    for block in model.transformer.h:
        block.modulation.register_forward_hook(lambda module, args, output: seen.append((args, output)))
    images = batch["image_tokens"]
    with torch.no_grad():
        model(batch["input_ids"], image_embeds=images)
        encoded = model.transformer.image_encoder(images)
    assert len(seen) == model.config.n_layer
    for (cross, condition), output in seen:
        torch.testing.assert_close(condition, encoded.mean(1, keepdim=True))
    block = model.transformer.h[0]
    (cross, condition), output = seen[0]
    projected = block.modulation.proj(condition)
    if kind == "film":
        gamma, beta = projected.chunk(2, dim=-1)
        expected = (1 + gamma) * cross + beta
    else:
        expected = cross * (1 + torch.sigmoid(projected))
    torch.testing.assert_close(output, expected)


@pytest.mark.parametrize("variant", sorted(port.VARIANTS))
def test_the_converted_authors_checkpoint_computes_the_papers_function(variant, tmp_path):
    """Random weights in the reference's names and layout -> `python -m modeling_gatedgpt.convert_looking_to_learn`
    -> the saved GatedGPT2 (preset `paper_code`) gives the independent port's logits and gates, to 1e-5 in float32:
    a global (B, D) image, right-padded text, and a text-only row in the same batch."""
    weights = port.random_state_dict(variant=port.VARIANTS[variant])
    torch.save({"model_state_dict": weights, "epoch": 3}, tmp_path / "best_model.pt")
    convert_main(["--checkpoint", str(tmp_path / "best_model.pt"), "--variant", variant, "--n-head", "4",
                  "--out", str(tmp_path / "converted")])
    model = GatedGPT2ForCausalLM.from_pretrained(tmp_path / "converted").eval()
    preset = {**PRESETS["paper_code"], **PAPER_VARIANTS[variant]}
    preset.pop("first_cross_attention_layer", None)
    assert {name: getattr(model.config, name) for name in preset} == preset
    assert model.config.image_encoder_has_final_norm == (variant == "mlp_encoder")

    generator = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 40, (3, 10), generator=generator)
    image = torch.randn(3, 12, generator=generator)
    real = torch.ones(3, 10, dtype=torch.bool)
    real[1, 7:] = False  # right padding
    rows = torch.tensor([True, True, False])  # the last row has no image
    reference_gates = []
    expected = port.forward(weights, ids, image, rows, padding=~real, heads=4, gates_out=reference_gates,
                            variant=port.VARIANTS[variant])
    with torch.no_grad():
        out = model(ids, attention_mask=real.long(), image_embeds=image, image_mask=rows, output_gates=True)
    torch.testing.assert_close(out.logits[real], expected[real], rtol=0, atol=1e-5)
    assert len(out.gates) == len(reference_gates) == {"gate_none": 0, "with_lcg": 1}.get(variant, 2)
    for ours, theirs in zip(out.gates, reference_gates):
        torch.testing.assert_close(ours[real], theirs[real], rtol=0, atol=1e-5)
    with torch.no_grad():  # and a text-only batch is the reference run without an image
        text_only = model(ids[:1]).logits
    torch.testing.assert_close(text_only, port.forward(weights, ids[:1], heads=4, variant=port.VARIANTS[variant]),
                               rtol=0, atol=1e-5)
    assert (text_only - out.logits[:1]).abs().max() > 0.1  # the image matters: the comparison is not vacuous
    if port.VARIANTS[variant].auxiliary:  # the auxiliary loss, over rows that all have an image
        with torch.no_grad():
            loss = model(ids, attention_mask=real.long(), image_embeds=image).contrastive_loss
        expected_loss = port.auxiliary_loss(weights, ids, image, ~real, heads=4, variant=port.VARIANTS[variant])
        torch.testing.assert_close(loss, expected_loss, rtol=0, atol=1e-5)
        assert loss > 0.1


def test_every_variant_the_port_knows_is_one_the_converter_converts():
    assert sorted(port.VARIANTS) == sorted(CONVERTED)


def test_the_papers_image_modulation_reads_future_tokens_and_gatedgpt2s_does_not():
    """Why the converter refuses film_on_image: in the paper's code the logits at position 0 change when the last
    token does (the image is conditioned on the whole caption); in GatedGPT2's film_on_image they cannot."""
    variant = port.LEAKY_VARIANTS["film_on_image"]
    weights = port.random_state_dict(variant=variant)
    generator = torch.Generator().manual_seed(2)
    ids, image = torch.randint(0, 40, (2, 8), generator=generator), torch.randn(2, 12, generator=generator)
    changed = ids.clone()
    changed[:, -1] = (ids[:, -1] + 1) % 40
    theirs = [port.forward(weights, tokens, image, heads=4, variant=variant) for tokens in (ids, changed)]
    assert (theirs[0][:, :-1] - theirs[1][:, :-1]).abs().max() > 1e-2
    model = tiny_model(modulation="film", modulation_target="image", vocab_size=40, image_embed_dim=12)
    with torch.no_grad():
        ours = [model(tokens, image_embeds=image).logits for tokens in (ids, changed)]
    torch.testing.assert_close(ours[0][:, :-1], ours[1][:, :-1], rtol=0, atol=0)


def test_the_lcg_files_layer_0_cross_attention_which_it_never_runs_is_left_out_by_name(tmp_path, capsys):
    weights = port.random_state_dict(variant=port.VARIANTS["with_lcg"])
    torch.save(weights, tmp_path / "lcg.pt")
    convert_main(["--checkpoint", str(tmp_path / "lcg.pt"), "--variant", "with_lcg", "--n-head", "4",
                  "--out", str(tmp_path / "converted")])
    left_out = capsys.readouterr().out.split("never reads: ")[1].strip().split(", ")
    assert left_out == sorted(k for k in weights if k.startswith("decoder.layers.0.") and
                              k.split(".")[3] in ("cross_attn_txt_image", "norm2", "gate"))
    assert len(left_out) == 10
    model = GatedGPT2ForCausalLM.from_pretrained(tmp_path / "converted")
    assert model.config.cross_attention_layers == [1] and not model.transformer.h[0].has_cross_attention


def test_the_converter_names_what_does_not_fit(tmp_path):
    weights = port.random_state_dict()
    weights["decoder.layers.0.extra.weight"] = torch.zeros(2)
    del weights["decoder.layers.1.norm3.bias"]
    torch.save(weights, tmp_path / "odd.pt")
    arguments = ["--checkpoint", str(tmp_path / "odd.pt"), "--n-head", "4", "--out", str(tmp_path / "o")]
    with pytest.raises(ValueError, match=r"missing \['decoder.layers.1.norm3.bias'\], not mapped "
                                         r"\['decoder.layers.0.extra.weight'\]"):
        convert_main([*arguments, "--variant", "base"])
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match=r"--variant film_on_image: the reference conditions the image tokens on the "
                                         r"whole caption's mean, a future-token leak"):
        convert_main([*arguments, "--variant", "film_on_image"])
    lcg = port.random_state_dict(variant=port.VARIANTS["with_lcg"])
    torch.save({**lcg, "output_layer.weight": lcg["output_layer.weight"] + 1}, tmp_path / "untied.pt")
    with pytest.raises(ValueError, match=r"this variant ties output_layer.weight to text_embedding.token_embedding"):
        convert_main(["--checkpoint", str(tmp_path / "untied.pt"), *arguments[2:], "--variant", "with_lcg"])
    for incomplete in ([*arguments, "--variant", "film"], arguments[:2] + arguments[4:] + ["--variant", "base"]):
        with pytest.raises(SystemExit):  # an unknown variant; no --n-head, which the weights cannot tell
            convert_main(incomplete)


def test_train_py_builds_the_paper_code_preset_and_gpt2_conversions_refuse_it(tiny_world, tmp_path):
    import train
    from tests.helpers.training import tiny_train_args

    args = tiny_train_args(tiny_world, tmp_path, "--preset", "paper_code", "--max_steps", "1")
    train.main([str(Path(__file__).parents[1] / "configs" / "demo.yaml"), *args])
    model = GatedGPT2ForCausalLM.from_pretrained(tmp_path / "run")
    assert {name: getattr(model.config, name) for name in PRESETS["paper_code"]} == PRESETS["paper_code"]
    assert model.transformer.ln_f is None and model.lm_head.bias is not None
    with pytest.raises(ValueError, match=r"this text stream is not a GPT-2 \(\{'scale_embedding': True"):
        model.to_gpt2()
    gpt2 = tiny_model().to_gpt2()
    with pytest.raises(ValueError, match=r"\['final_norm'\] are fixed by the GPT-2 checkpoint"):
        GatedGPT2ForCausalLM.from_gpt2(gpt2, final_norm=False)
    with pytest.raises(ValueError, match=r"`preset` must be one of \['default', 'paper_code'\], got 'paper'"):
        GatedGPT2Config.from_preset("paper")


def test_the_papers_dropout_placement_drops_the_fused_mix_the_activation_and_the_ffn_output_twice(batch):
    """In training, the order of the dropouts a decoder block applies (eager attention, so that attention-probability
    dropout is a module call); at inference both placements compute the same function."""
    def dropouts_applied(placement):
        model = tiny_model(dropout_placement=placement, resid_pdrop=0.1, attn_pdrop=0.1,
                           attn_implementation="eager").train()
        names, block = [], model.transformer.h[1]
        for name, module in block.named_modules():
            if isinstance(module, torch.nn.Dropout):
                module.register_forward_hook(lambda m, args, out, name=name: names.append(name))
        model(batch["input_ids"], image_embeds=batch["image_global"])
        return model, names

    paper, paper_order = dropouts_applied("paper_code")
    gpt2, gpt2_order = dropouts_applied("gpt2")
    assert paper_order == ["attn.resid_dropout", "crossattention.resid_dropout", "fused_dropout",
                           "mlp.act_dropout", "mlp.dropout.0", "mlp.dropout.1"]
    assert gpt2_order == ["attn.resid_dropout", "crossattention.resid_dropout", "mlp.dropout.0"]
    gpt2.load_state_dict(paper.state_dict())  # the same parameters: dropout modules hold none
    with torch.no_grad():
        torch.testing.assert_close(paper.eval()(batch["input_ids"], image_embeds=batch["image_global"]).logits,
                                   gpt2.eval()(batch["input_ids"], image_embeds=batch["image_global"]).logits,
                                   rtol=0, atol=0)


def test_the_papers_initialisation_is_pytorchs_default():
    model = GatedGPT2ForCausalLM(GatedGPT2Config.from_preset(
        "paper_code", vocab_size=500, n_embd=64, n_head=4, n_inner=256, n_layer=2, image_embed_dim=48,
        image_encoder_layers=1))
    width, block = 64, model.transformer.h[0]
    assert 0.9 < float(model.transformer.wte.weight.std()) < 1.1  # nn.Embedding: N(0, 1)
    for linear, fan_in in ((model.lm_head, width), (block.mlp.c_fc, width), (block.mlp.c_proj, 256),
                           (block.gate.proj, 2 * width), (model.transformer.image_encoder.proj, 48)):
        for tensor in (linear.weight, linear.bias):  # nn.Linear: uniform(+-1/sqrt(fan_in)), bias included
            assert float(tensor.abs().max()) <= 1 / fan_in ** 0.5
            assert float(tensor.abs().max()) > 0.9 / fan_in ** 0.5
    xavier = (6 / (4 * width)) ** 0.5  # nn.MultiheadAttention: one Xavier-uniform packed in-projection
    for attention in (block.attn, block.crossattention, model.transformer.image_encoder.layers[0].self_attn):
        packed = torch.cat([attention.c_attn.weight, *([attention.q_attn.weight] if attention.is_cross_attention
                                                       else [])], dim=1)
        assert xavier * 0.9 < float(packed.abs().max()) <= xavier
        assert not attention.c_attn.bias.any() and not attention.c_proj.bias.any()
        assert float(attention.c_proj.weight.abs().max()) <= 1 / width ** 0.5
    gpt2 = GatedGPT2ForCausalLM(GatedGPT2Config(vocab_size=500, n_embd=64, n_head=4, n_layer=2, image_embed_dim=48))
    assert 0.018 < float(gpt2.transformer.wte.weight.std()) < 0.022  # the default N(0, 0.02), unchanged
