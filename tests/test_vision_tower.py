"""A model with a `vision_config` takes `pixel_values` through a frozen DINOv2 tower; with a processor, it runs the
way the BabyLM pipeline runs multimodal models."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import Dinov2Config, Dinov2Model

from modeling_gatedgpt import GatedGPT2ForCausalLM, GatedGPT2Processor
from tests.helpers.models import IMAGE_DIM, VISION, tiny_model
from tests.helpers.remote_code import WITHOUT_THE_PACKAGE, offline_hub_env


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


PIPELINE_LOADER = WITHOUT_THE_PACKAGE + textwrap.dedent(
    """

    import torch
    from PIL import Image
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoProcessor

    # what the BabyLM 2025 pipeline does for a causal model with images
    checkpoint, image_file, out_file = sys.argv[1:]
    processor = AutoProcessor.from_pretrained(checkpoint, padding_side="right", trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, trust_remote_code=True).eval()
    output = processor(text="a red circle left of a cube", images=Image.open(image_file).convert("RGB"),
                       return_offsets_mapping=True)
    tokens = torch.LongTensor(output["input_ids"])[None]
    with torch.no_grad():
        logits = model(input_ids=tokens[:, :-1], attention_mask=torch.LongTensor(output["attention_mask"])[None, :-1],
                       pixel_values=torch.FloatTensor(output["pixel_values"])).logits
    assert logits.shape[1] == tokens.shape[1] - 1, logits.shape
    assert output["offset_mapping"][0] == (0, 0) and output["offset_mapping"][1][0] == 0
    save_file({"logits": logits, "input_ids": tokens}, out_file)
    print("PIPELINE-OK", type(processor).__name__)
    """
)


def test_a_checkpoint_with_an_attached_tower_runs_the_babylm_pipeline_way(tmp_path):
    """`python -m gatedgpt2.eval attach-vision-tower` -> AutoProcessor turns a PIL image into pixel_values, and the
    model's logits equal those of the original checkpoint given the tower's embeddings; loaded without the package."""
    from gatedgpt2.data import train_tokenizer
    from gatedgpt2.eval.__main__ import main as eval_main

    tokenizer = train_tokenizer(["a red circle left of a blue cube", "the cube is green"] * 20, 80, 32)
    model = tiny_model(vocab_size=len(tokenizer))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    torch.manual_seed(1)
    tower = Dinov2Model(Dinov2Config(**VISION)).eval()
    tower.save_pretrained(tmp_path / "dinov2")
    eval_main(["attach-vision-tower", "--model", str(tmp_path / "model"), "--vision-tower", str(tmp_path / "dinov2"),
               "--vision-feature", "cls_patches", "--out", str(tmp_path / "pipeline")])

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 52, 3), dtype=np.uint8))
    image.save(tmp_path / "image.png")
    result = subprocess.run([sys.executable, "-c", PIPELINE_LOADER, str(tmp_path / "pipeline"),
                             str(tmp_path / "image.png"), str(tmp_path / "out.safetensors")],
                            cwd=tmp_path, env=offline_hub_env(tmp_path / "hf_home"), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "PIPELINE-OK GatedGPT2Processor" in result.stdout

    pipeline = load_file(tmp_path / "out.safetensors")
    processor = GatedGPT2Processor.for_vision_tower(tokenizer, tower.config)
    pixel_values = torch.as_tensor(np.asarray(processor(images=image)["pixel_values"]))
    assert pixel_values.shape == (1, 3, 28, 28)
    with torch.no_grad():
        embeds = tower(pixel_values=pixel_values).last_hidden_state
        expected = model(pipeline["input_ids"][:, :-1], image_embeds=embeds).logits
    torch.testing.assert_close(pipeline["logits"], expected)


def test_without_a_tower_the_auto_processor_is_the_tokenizer(tmp_path):
    from transformers import AutoProcessor

    from gatedgpt2.data import train_tokenizer

    tokenizer = train_tokenizer(["a red circle", "the cube"] * 20, 60, 32)
    tiny_model(vocab_size=len(tokenizer)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    processor = AutoProcessor.from_pretrained(tmp_path, padding_side="right", trust_remote_code=True)
    encoded = processor(text="a red cube", return_offsets_mapping=True)
    assert encoded["input_ids"] == tokenizer("a red cube")["input_ids"]
    assert encoded["input_ids"][0] == tokenizer.bos_token_id and encoded["offset_mapping"][0] == (0, 0)


def test_attaching_a_tower_checks_its_width():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"hidden_size \(48\) must equal image_embed_dim \(24\)"):
        model.attach_vision_tower(Dinov2Model(Dinov2Config(**{**VISION, "hidden_size": 48})))
    with pytest.raises(ValueError, match="`vision_feature` must be one of"):
        model.attach_vision_tower(Dinov2Model(Dinov2Config(**VISION)), "patches")
