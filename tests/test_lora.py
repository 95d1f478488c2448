"""Masked LoRA fine-tuning: the adapter round-trips through PEFT and remote code, merges exactly, masks the CLS key,
and trains through train.py (also as QLoRA on CPU)."""

import json
import os

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from gatedgpt2.data import train_tokenizer
from gatedgpt2.eval.checkpoint import load_checkpoint
from gatedgpt2.trainer.lora import ImageKeyMasking, lora_model
from modeling_gatedgpt import knockout
from tests.helpers.models import tiny_model
from tests.helpers.training import tiny_train_args


@pytest.fixture
def adapted(tmp_path, batch):
    """A tiny base saved to disk and a LoRA model on it whose adapter is not the identity (its vocabulary holds a
    byte-level tokenizer's 256 bytes and special tokens)."""
    base = tiny_model(vocab_size=270)
    base.save_pretrained(tmp_path / "base")
    model = lora_model(base, rank=4, alpha=8)
    torch.manual_seed(3)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                parameter.add_(torch.randn_like(parameter) * 0.05)
    return model.eval()


def test_lora_targets_the_attention_projections_and_trains_the_gates(adapted):
    targeted = {name.rsplit(".lora_A", 1)[0] for name, _ in adapted.named_parameters() if ".lora_A" in name}
    assert {n.split("transformer.")[1] for n in targeted} == {f"h.{i}.{m}" for i in range(2) for m in (
        "attn.c_attn", "attn.c_proj", "crossattention.q_attn", "crossattention.c_attn", "crossattention.c_proj")}
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert any("gate.modules_to_save" in n for n in trainable)
    assert not any("image_encoder" in n or "wte" in n or "mlp" in n for n in trainable)


def test_adapter_saves_loads_on_a_remote_code_base_and_merges_exactly(adapted, tmp_path, batch):
    inputs = dict(input_ids=batch["input_ids"], image_embeds=batch["image_tokens"])
    with torch.no_grad():
        expected = adapted(**inputs).logits
    adapted.save_pretrained(tmp_path / "adapter")
    files = set(os.listdir(tmp_path / "adapter"))
    assert "adapter_model.safetensors" in files and not any(f.endswith((".bin", ".pt")) for f in files)

    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base", trust_remote_code=True)
    loaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, expected, rtol=0, atol=0)
        merged = loaded.merge_and_unload()
        torch.testing.assert_close(merged(**inputs).logits, expected, rtol=1e-5, atol=1e-5)
    assert not any("lora" in n for n, _ in merged.named_parameters())

    # the evaluation commands take the adapter folder as a model: its base, merged (train.py's adapters name their
    # base; this in-memory one is told)
    path = tmp_path / "adapter" / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "base_model_name_or_path": str(tmp_path / "base")}))
    train_tokenizer(["a red cube"] * 5, vocab_size=270, model_max_length=32).save_pretrained(tmp_path / "adapter")
    model, _ = load_checkpoint(str(tmp_path / "adapter"), device="cpu")
    assert type(model).__name__ == "GatedGPT2ForCausalLM" and not any("lora" in n for n, _ in model.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, expected, rtol=1e-5, atol=1e-5)


def test_image_key_masking_masks_the_cls_key_with_its_probability(batch):
    model = tiny_model()
    inputs = dict(input_ids=batch["input_ids"], image_embeds=batch["image_tokens"])
    masks = ImageKeyMasking(0.25, random_patches=2, seed=0).draw(4000, 5)
    assert masks[:, 0].float().mean() == pytest.approx(0.25, abs=0.03)
    assert (masks[:, 1:].sum(1) == 2).all()

    with torch.no_grad():
        with ImageKeyMasking(1.0).applied(model, inputs):
            masked = model(**inputs).logits
        with knockout(model, torch.tensor([True, False, False, False, False]), renormalise=True):
            expected = model(**inputs).logits
        torch.testing.assert_close(masked, expected, rtol=0, atol=0)
        with ImageKeyMasking(0.0).applied(model, inputs):
            assert torch.equal(model(**inputs).logits, model(**inputs).logits)
    with pytest.raises(ValueError, match="needs CLS \\+ patch tokens; the images have 1 token"):
        ImageKeyMasking(0.5).draw(2, 1)


def test_image_key_masking_gives_the_same_gradients_with_gradient_checkpointing(batch):
    """The recomputation in backward runs after the masking's `with` block: the knockout travels as a block argument,
    so it is recomputed with the same masked keys (before, torch raised a CheckpointError on the mismatch)."""
    inputs = dict(input_ids=batch["input_ids"], labels=batch["input_ids"], image_embeds=batch["image_tokens"])

    def gradients(checkpointing: bool) -> dict[str, torch.Tensor]:
        model = tiny_model().train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        with ImageKeyMasking(1.0, random_patches=2, seed=0).applied(model, inputs):
            loss = model(**inputs).loss
        loss.backward()  # outside, as in the Trainer's training_step
        return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = gradients(False), gradients(True)
    assert sorted(checkpointed) == sorted(plain) and any("crossattention" in name for name in plain)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("quantised", [False, True])
def test_masked_lora_fine_tunes_a_trained_checkpoint_through_train_py(tiny_world, tmp_path, quantised):
    import train

    patches = ["--embedding_files", f"{tiny_world}/captions/train_cls_patches.npy",
               "--eval_embedding_files", f"{tiny_world}/captions/dev_cls_patches.npy"]
    # bitsandbytes' CPU 4-bit kernel for AVX512-BF16 machines needs every quantised input width to be a multiple of
    # its block of 64 (narrower layers fail inside bitsandbytes with a reshape error)
    width = ["--model.n_embd", "64", "--model.n_inner", "128"] if quantised else []
    train.main(tiny_train_args(tiny_world, tmp_path / "base", *patches, *width))
    run = tmp_path / "base" / "run"
    extra = ["--model_name_or_path", str(run), "--lora_r", "4", "--mask_cls_probability", "0.5",
             "--mask_random_patches", "1", "--max_steps", "3", "--output_dir", str(tmp_path / "lora"),
             *(["--load_in_bits", "4"] if quantised else [])]
    summary = train.main(tiny_train_args(tiny_world, tmp_path / "lora_cache", *patches, *width, *extra))
    assert summary["train"]["train_loss"] > 0
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["base_model_name_or_path"] == str(run)
    assert "gate" in config["modules_to_save"]
    if not quantised:  # the adapter loads back on the full-precision base
        base = AutoModelForCausalLM.from_pretrained(run, trust_remote_code=True)
        PeftModel.from_pretrained(base, tmp_path / "lora")


def test_lora_and_masking_need_their_inputs(tiny_world, tmp_path):
    import train

    with pytest.raises(ValueError, match="give its checkpoint as model_name_or_path"):
        train.main(tiny_train_args(tiny_world, tmp_path, "--lora_r", "4"))
    with pytest.raises(ValueError, match=r"need CLS \+ patch image tokens"):
        train.main(tiny_train_args(tiny_world, tmp_path, "--mask_cls_probability", "0.5"))
