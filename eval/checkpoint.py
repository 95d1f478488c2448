"""Checkpoints loaded as the BabyLM pipeline loads them: the Auto classes, with the checkpoint's own code.

Loading a checkpoint's code runs it. That is trusted without asking only for a checkpoint this package wrote: a
`gated_gpt2` config whose `auto_map` names exactly this package's classes (for which the installed, registered
classes are used anyway). Any other checkpoint's code runs only if the caller says so (`trust_remote_code=True`,
`--trust-remote-code`); otherwise transformers refuses to load it, naming the flag."""

from __future__ import annotations

from pathlib import Path

from gatedgpt2.data import portable_tokenizer
from gatedgpt2.data.model_folder import check_loading_info, check_local_model
from modeling_gatedgpt import GatedGPT2Config
from modeling_gatedgpt.compat import PreTrainedConfig
from modeling_gatedgpt.modeling_gatedgpt import checkpoint_auto_map


def is_gatedgpt2_checkpoint(config: dict) -> bool:
    """Whether a config (as a dict) is one this package writes: its model type, and an `auto_map` that names this
    package's classes and nothing else ("module.Class", or "repo--module.Class" as the Hub rewrites it)."""
    auto_map = {key: str(value).split("--")[-1] for key, value in (config.get("auto_map") or {}).items()}
    return config.get("model_type") == GatedGPT2Config.model_type and auto_map == checkpoint_auto_map()


def load_checkpoint(model: str, revision: str | None = None, device: str | None = None,
                    trust_remote_code: bool | None = None):
    """Model and tokenizer as the BabyLM pipeline loads them (Auto classes, remote code). A LoRA adapter folder (what
    `train.py --lora_r` saves) loads on its base model, merged into it. `trust_remote_code`: None trusts only this
    package's checkpoints (see the module docstring)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_local_model(model)
    folder, base = Path(model), None
    if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        from peft import PeftConfig

        # not AutoPeftModelForCausalLM: it resizes the base's embeddings to the tokenizer's length
        base = PeftConfig.from_pretrained(model, revision=revision).base_model_name_or_path
        check_local_model(base, tokenizer=False)  # the adapter's folder holds the tokenizer
    tokenizer_code = bool(trust_remote_code)  # this package's tokenizers need no code: a fast tokenizer's files
    if trust_remote_code is None:
        config, _ = PreTrainedConfig.get_config_dict(base or model, revision=None if base else revision)
        trust_remote_code = is_gatedgpt2_checkpoint(config)
    tokenizer = portable_tokenizer(AutoTokenizer.from_pretrained(model, revision=revision,
                                                                 trust_remote_code=tokenizer_code))
    if base is not None:
        from peft import PeftModel

        network, info = AutoModelForCausalLM.from_pretrained(base, trust_remote_code=trust_remote_code,
                                                             output_loading_info=True)
        check_loading_info(base, info)
        network = PeftModel.from_pretrained(network, model, revision=revision).merge_and_unload()
    else:
        network, info = AutoModelForCausalLM.from_pretrained(model, revision=revision,
                                                             trust_remote_code=trust_remote_code,
                                                             output_loading_info=True)
        check_loading_info(model, info)
    vocabulary = network.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocabulary:
        raise ValueError(f"{model}: the tokenizer has {len(tokenizer)} tokens but the model's vocabulary has "
                         f"{vocabulary}; token ids {vocabulary} and up would index past its embeddings. The folder "
                         f"must hold the tokenizer the model was trained with.")
    return network.to(device).eval(), tokenizer
