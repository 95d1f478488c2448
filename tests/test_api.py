"""The transformers conventions users rely on: tied embeddings, tuples, dtypes, hidden-state counts."""

import torch

from tests.helpers.models import tiny_model


def test_word_embeddings_are_tied_unless_asked_not_to():
    tied = tiny_model()
    assert tied.lm_head.weight is tied.transformer.wte.weight
    untied = tiny_model(tie_word_embeddings=False)
    assert untied.lm_head.weight is not untied.transformer.wte.weight


def test_tuple_outputs_and_hidden_states(batch):
    model = tiny_model(n_layer=3)
    with torch.no_grad():
        as_dict = model(batch["input_ids"], image_embeds=batch["image_global"], output_hidden_states=True)
        as_tuple = model(batch["input_ids"], image_embeds=batch["image_global"], return_dict=False)
    assert len(as_dict.hidden_states) == 4  # embeddings + one per layer, the last after ln_f as in GPT-2
    final = model.transformer(batch["input_ids"], image_embeds=batch["image_global"]).last_hidden_state
    assert torch.equal(as_dict.hidden_states[-1], final)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], as_dict.logits)
    assert model(batch["input_ids"]).gates is None  # nothing recorded unless asked


def test_bfloat16_with_float32_image_embeds(batch):
    model = tiny_model(modulation="film", modulation_target="image").to(torch.bfloat16)
    images = batch["image_tokens"]  # float32 from a feature extractor
    out = model(batch["input_ids"], image_embeds=images, image_attention_mask=torch.ones(3, 5),
                labels=batch["input_ids"])
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)
    generated = model.generate(batch["input_ids"][:1], image_embeds=images[:1], max_new_tokens=3, do_sample=False)
    assert generated.shape == (1, 12)
