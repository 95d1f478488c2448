"""Checkpoints loaded as the BabyLM pipeline loads them: the Auto classes with remote code."""

from __future__ import annotations

from pathlib import Path

from gatedgpt2.data import portable_tokenizer


def load_checkpoint(model: str, revision: str | None = None, device: str | None = None):
    """Model and tokenizer as the BabyLM pipeline loads them (Auto classes, remote code). A LoRA adapter folder (what
    `train.py --lora_r` saves) loads on its base model, merged into it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = portable_tokenizer(AutoTokenizer.from_pretrained(model, revision=revision, trust_remote_code=True))
    folder = Path(model)
    if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        from peft import PeftConfig, PeftModel

        # not AutoPeftModelForCausalLM: it resizes the base's embeddings to the tokenizer's length
        base = PeftConfig.from_pretrained(model, revision=revision).base_model_name_or_path
        network = AutoModelForCausalLM.from_pretrained(base, trust_remote_code=True)
        network = PeftModel.from_pretrained(network, model, revision=revision).merge_and_unload()
    else:
        network = AutoModelForCausalLM.from_pretrained(model, revision=revision, trust_remote_code=True)
    return network.to(device).eval(), tokenizer
