"""Bad input gets a clear ValueError naming the argument, what was expected and what came."""

import pytest
import torch

from tests.helpers.models import IMAGE_DIM, tiny_config, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


IDS = torch.randint(3, 90, (2, 5))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(image_embeds=torch.randn(2, IMAGE_DIM + 1)), r"image_embeds.*image_embed_dim=24, got 25"),
        (dict(image_embeds=torch.randn(2, 3, 2, IMAGE_DIM)), r"image_embeds.*got shape \(2, 3, 2, 24\)"),
        (dict(image_embeds=torch.randn(3, IMAGE_DIM)), r"image_embeds.*3 rows but the text batch has 2"),
        (dict(image_embeds=torch.tensor([[0.0] * IMAGE_DIM, [float("nan")] * IMAGE_DIM])), r"NaN or Inf in rows \[1\]"),
        (dict(image_embeds=torch.full((2, 4, IMAGE_DIM), float("inf"))), r"NaN or Inf in rows \[0, 1\]"),
        (dict(pixel_values=torch.randn(2, 3, 28, 28)), r"pixel_values.*no vision tower"),
        (dict(image_embeds=torch.randn(2, IMAGE_DIM), image_mask=torch.ones(3, dtype=torch.bool)),
         r"image_mask.*\(2,\), got \(3,\)"),
        (dict(image_embeds=torch.randn(2, 4, IMAGE_DIM), image_attention_mask=torch.ones(2, 3)),
         r"image_attention_mask.*\(2, 4\), got \(2, 3\)"),
        (dict(image_embeds=torch.randn(2, 4, IMAGE_DIM),
              image_attention_mask=torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]])),
         r"masks every image token of rows \[1\]"),
        (dict(image_mask=torch.ones(2, dtype=torch.bool)), r"image_mask.*without `image_embeds`"),
        (dict(image_embeds=torch.randn(2, IMAGE_DIM), image_mask=torch.tensor([0.5, 1.0])),
         r"`image_mask` must be boolean \(or 0/1\), got values \[0.5, 1.0\]"),
        (dict(image_embeds=torch.randn(2, IMAGE_DIM), image_mask=torch.tensor([float("nan"), 0.0])),
         r"`image_mask` must be boolean \(or 0/1\), got values \[nan, 0.0\]"),
    ],
)
def test_bad_image_inputs(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        model(IDS, **kwargs)


@pytest.mark.parametrize(
    "args, kwargs, error, message",
    [
        ((IDS.tolist(),), {}, TypeError, r"`input_ids` must be a torch.Tensor, got list"),
        ((IDS,), dict(image_embeds=torch.randn(2, IMAGE_DIM), image_mask=[True, False]), TypeError,
         r"`image_mask` must be a torch.Tensor, got list"),
        ((IDS,), dict(image_embeds=[[0.0] * IMAGE_DIM] * 2), TypeError, r"`image_embeds` must be a torch.Tensor"),
        ((torch.zeros(2, 0, dtype=torch.long),), {}, ValueError,
         r"`input_ids` must be \(batch, sequence\) with at least one token, got shape \(2, 0\)"),
        ((IDS,), dict(labels=torch.full_like(IDS, -100)), ValueError, r"`labels` leave nothing to predict"),
    ],
)
def test_bad_text_inputs_and_labels(model, args, kwargs, error, message):
    with pytest.raises(error, match=message):
        model(*args, **kwargs)


def test_nan_in_a_row_without_image_is_fine(model):
    images = torch.randn(2, IMAGE_DIM)
    images[1] = float("nan")
    logits = model(IDS, image_embeds=images, image_mask=torch.tensor([True, False])).logits
    assert torch.isfinite(logits).all()


def test_too_long_sequence(model):
    with pytest.raises(ValueError, match=r"Sequence length 33 .*exceeds n_positions=32"):
        model(torch.randint(3, 90, (1, 33)))
    with pytest.raises(ValueError, match=r"position_ids.*reach 40 but n_positions=32"):
        model(IDS, position_ids=torch.arange(36, 41).unsqueeze(0))


def test_too_long_generation(model):
    with pytest.raises(ValueError, match=r"position_ids` reach 32 but n_positions=32"):
        model.generate(torch.randint(3, 90, (1, 30)), max_new_tokens=5, do_sample=False)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(gate="sparse"), r"`gate` must be one of \['soft', 'hard', 'none'\], got 'sparse'"),
        (dict(gate_granularity="head"), r"`gate_granularity` must be one of \['feature', 'token'\]"),
        (dict(fusion="add"), r"`fusion` must be one of \['paper', 'residual'\]"),
        (dict(modulation="adain"), r"`modulation` must be one of \[None, 'film', 'dyintra'\]"),
        (dict(modulation_target="pixels"), r"`modulation_target` must be one of \['text', 'cross_attn', 'image'\]"),
        (dict(modulation="film", gate="none"), r"modulation_target='text' modulates the gate's text input, and "
                                                r"gate='none' has no gate: set modulated_text_queries_image=True"),
        (dict(image_encoder="cnn"), r"`image_encoder` must be one of \['transformer', 'mlp', 'linear'\]"),
        (dict(contrastive="triplet"), r"`contrastive` must be one of \[None, 'clip', 'lcg'\]"),
        (dict(vision_feature="patches"), r"`vision_feature` must be one of \['cls', 'cls_patches'\]"),
        (dict(cross_attention_layers=[0, 5]), r"cross_attention_layers.*\[0, 2\), got \[0, 5\]"),
        (dict(n_embd=30), r"n_embd.*divisible by `n_head`"),
        (dict(gate_temperature_end=2.0), r"0 < gate_temperature_end <= gate_temperature_start"),
        (dict(gate_temperature_schedule="cosine"), r"`gate_temperature_schedule` must be one of \['geometric', "
                                                   r"'linear'\], got 'cosine'"),
        (dict(vision_config=dict(hidden_size=16, num_attention_heads=2)),
         r"image_embed_dim.*\(24\).*hidden_size \(16\)"),
        (dict(n_layer=-1), r"`n_layer` must be an integer >= 1, got -1"),
        (dict(n_head=0), r"`n_head` must be an integer >= 1, got 0"),
        (dict(channel_attention_reduction=0), r"`channel_attention_reduction` must be an integer >= 1, got 0"),
        (dict(n_inner=2.5), r"`n_inner` must be an integer >= 1, got 2.5"),
        (dict(layer_norm_epsilon=0.0), r"`layer_norm_epsilon` must be > 0, got 0.0"),
        (dict(cross_attention_layers=[0.5]), r"cross_attention_layers.*distinct indices in \[0, 2\), got \[0.5\]"),
        (dict(cross_attention_layers=[1, 1]), r"cross_attention_layers.*distinct indices in \[0, 2\), got \[1, 1\]"),
        (dict(gate_temperature_clock="epochs"), r"`gate_temperature_clock` must be one of \['optimizer_steps', "
                                                r"'image_batches'\], got 'epochs'"),
        (dict(contrastive_temperature=2.0, contrastive_temperature_max=1.0),
         r"0 < contrastive_temperature_min <= contrastive_temperature <= contrastive_temperature_max, got min=0.01, "
         r"initial=2.0, max=1.0"),
        (dict(contrastive_similarity="l2"), r"`contrastive_similarity` must be one of \['cosine', 'dot'\]"),
        (dict(initialization="xavier"), r"`initialization` must be one of \['normal', 'gpt2', 'paper_code'\]"),
        (dict(dropout_placement="everywhere"), r"`dropout_placement` must be one of \['gpt2', 'paper_code'\]"),
        (dict(lcg_objective="f1"), r"`lcg_objective` must be one of \['token_to_image', 'two_way'\], got 'f1'"),
        (dict(contrastive_text_source="last"), r"`contrastive_text_source` must be one of \['before_cross_attention', "
                                               r"'embeddings'\]"),
    ],
)
def test_bad_config_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)
