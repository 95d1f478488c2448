"""GatedGPT2: GPT-2 with token-wise gated cross-attention to image embeddings.

Importing this package registers the classes with `AutoConfig`, `AutoModel`, `AutoModelForCausalLM` and
`AutoModelForSequenceClassification`; saved checkpoints carry the code and an `auto_map` (a saved
`GatedGPT2Processor` too, for `AutoProcessor`), so they load with `trust_remote_code=True` where it is not installed.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from .configuration_gatedgpt import GatedGPT2Config, ImageKind
from .gating import HardGate, SoftGate, gate_per_token
from .interventions import knockout, patch_image_path, record_image_path
from .modeling_gatedgpt import (
    GatedGPT2ForCausalLM,
    GatedGPT2ForSequenceClassification,
    GatedGPT2Model,
    GatedGPT2PreTrainedModel,
)
from .processing_gatedgpt import GatedGPT2Processor

AutoConfig.register(GatedGPT2Config.model_type, GatedGPT2Config, exist_ok=True)
AutoModel.register(GatedGPT2Config, GatedGPT2Model, exist_ok=True)
AutoModelForCausalLM.register(GatedGPT2Config, GatedGPT2ForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(GatedGPT2Config, GatedGPT2ForSequenceClassification, exist_ok=True)
GatedGPT2Config.register_for_auto_class()
GatedGPT2Model.register_for_auto_class("AutoModel")
GatedGPT2ForCausalLM.register_for_auto_class("AutoModelForCausalLM")
GatedGPT2ForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
GatedGPT2Processor.register_for_auto_class("AutoProcessor")

__all__ = [
    "GatedGPT2Config",
    "GatedGPT2Model",
    "GatedGPT2ForCausalLM",
    "GatedGPT2ForSequenceClassification",
    "GatedGPT2PreTrainedModel",
    "GatedGPT2Processor",
    "HardGate",
    "SoftGate",
    "ImageKind",
    "gate_per_token",
    "knockout",
    "patch_image_path",
    "record_image_path",
]
