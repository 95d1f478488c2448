"""Masked LoRA fine-tuning ("The Narrow Gate", section on robustness): PEFT LoRA on the attention and cross-attention
projections, the gates trained in full, and during training the global/CLS image key (and optionally k random
patches) masked out of cross-attention with probability p, so that visual information has to travel through the
patches. Optionally QLoRA: the base loaded in 4 or 8 bits through bitsandbytes (which runs on CPU from 0.47)."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from modeling_gatedgpt import knockout

# every projection of the text stream's self- and cross-attention; the image encoder keeps its weights
LORA_TARGET_MODULES = r".*\.h\.\d+\.(attn|crossattention)\.(c_attn|q_attn|c_proj)"


def lora_model(model, rank: int, alpha: float, dropout: float = 0.0, target_modules: str = LORA_TARGET_MODULES,
               modules_to_save: list[str] | None = None):
    """`model` wrapped in a PEFT LoRA adapter; `modules_to_save` (default: the gates) are trained in full."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_quantized", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    modules_to_save = ["gate"] if modules_to_save is None else modules_to_save
    if model.config.gate == "none":
        modules_to_save = [m for m in modules_to_save if m != "gate"]
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                        modules_to_save=modules_to_save or None, task_type="CAUSAL_LM",
                        fan_in_fan_out=not getattr(model, "is_quantized", False))  # GPT-2's Conv1D stores W^T
    return get_peft_model(model, config)


def quantization_config(bits: int):
    from transformers import BitsAndBytesConfig

    # the gates are trained in full; the head is tied to the input embeddings; the image encoder is small and reads
    # raw image features, kept in full precision as QLoRA recipes keep a VLM's projector
    keep = [r".*\.gate", "lm_head", r".*\.image_encoder"]
    if bits == 4:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32,
                                  llm_int8_skip_modules=keep)
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=keep)
    raise ValueError(f"load_in_bits must be 4 or 8, got {bits}.")


class ImageKeyMasking:
    """Draws, for each training batch, which image tokens each row's cross-attention may not read: the first
    (global/CLS) token with probability `cls_probability`, and `random_patches` other tokens of every row."""

    def __init__(self, cls_probability: float, random_patches: int = 0, seed: int = 0):
        if not 0 <= cls_probability <= 1:
            raise ValueError(f"mask_cls_probability must be in [0, 1], got {cls_probability}.")
        if random_patches < 0:
            raise ValueError(f"mask_random_patches must be >= 0, got {random_patches}.")
        self.cls_probability, self.random_patches = cls_probability, random_patches
        self.generator = torch.Generator().manual_seed(seed)

    def draw(self, batch_size: int, num_tokens: int) -> torch.Tensor:
        if num_tokens < 2 + self.random_patches:
            raise ValueError(f"masking the CLS token and {self.random_patches} patches needs CLS + patch tokens; "
                             f"the images have {num_tokens} token(s).")
        mask = torch.zeros(batch_size, num_tokens, dtype=torch.bool)
        mask[:, 0] = torch.rand(batch_size, generator=self.generator) < self.cls_probability
        if self.random_patches:
            order = torch.rand(batch_size, num_tokens - 1, generator=self.generator).argsort(-1)
            mask.scatter_(1, 1 + order[:, : self.random_patches], True)
        return mask

    @contextmanager
    def applied(self, model, inputs: dict):
        """Renormalised knockout of the drawn tokens, in every cross-attention layer, for one forward."""
        images = inputs.get("image_embeds")
        if images is None:  # a text-only batch
            yield
            return
        tokens = images.shape[1] if images.dim() == 3 else 1
        with knockout(model, self.draw(images.shape[0], tokens), renormalise=True):
            yield
