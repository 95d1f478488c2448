"""Every difference between the transformers releases that a checkpoint's code meets, and nothing else.

A checkpoint's code runs on its user's transformers: 4.51.3 (the official BabyLM 2025 pipeline's pin) to the newest
5.x. The model files use the long-stable public API (`PreTrainedModel`, `GenerationMixin`, `ModelOutput`,
`DynamicCache`/`EncoderDecoderCache`, `ALL_ATTENTION_FUNCTIONS`, `Conv1D`) directly and take from here what changed
between releases; each entry says which releases take which path. `tests/test_version_matrix.py` loads a saved
checkpoint under each release it lists and compares logits, generations and tokenizer ids with the locked one.

Differences that need no switch, only one way of writing that every release reads, live where they are used: the
attention passes SDPA's `is_causal` explicitly (4.51-4.52 make every unmasked multi-query call causal), the processor
has its own `__call__` and saves in the 4.x file layout (processing_gatedgpt.py), the config has a plain `__init__`,
and tokenizers are saved under the class name `PreTrainedTokenizerFast` (trainer/data.py).
"""

from functools import partial

import transformers
from packaging.version import Version
from torch import nn

TRANSFORMERS_VERSION = Version(transformers.__version__).release


def _since(*release: int) -> bool:
    return TRANSFORMERS_VERSION >= release


# 5.0 renamed the config base class PretrainedConfig -> PreTrainedConfig (the old name is kept as an alias, for now).
PreTrainedConfig = transformers.PreTrainedConfig if _since(5, 0) else transformers.PretrainedConfig

# 5.0 added transformers.initialization: torch.nn.init's functions, made to skip tensors already loaded from a
# checkpoint. Before 5.0, from_pretrained initialises only missing weights itself, so torch's are the ones to use.
if _since(5, 0):
    from transformers import initialization as init  # noqa: F401
else:
    from torch.nn import init  # noqa: F401  (re-exported)

# 4.52 added GradientCheckpointingLayer (5.x checkpoints `forward` and counts these layers for `every_n_layers`).
# Before, gradient_checkpointing_enable() sets `gradient_checkpointing` and `_gradient_checkpointing_func` on every
# module that has the attribute, and the layer checkpoints its own call.
if _since(4, 52):
    from transformers.modeling_layers import GradientCheckpointingLayer
else:

    class GradientCheckpointingLayer(nn.Module):
        gradient_checkpointing = False

        def __call__(self, *args, **kwargs):
            if self.gradient_checkpointing and self.training:
                return self._gradient_checkpointing_func(partial(super().__call__, **kwargs), *args)
            return super().__call__(*args, **kwargs)


def tied_weights_keys(tied: dict[str, str]) -> dict[str, str] | list[str]:
    """5.0 ties weights from a {target: source} dict; 4.x takes the list of targets and ties them to the input
    embeddings through get_output_embeddings()."""
    return tied if _since(5, 0) else list(tied)


def cross_attention_cache_entry(cache, layer_idx: int):
    """The keys and values a layer stored in the cross-attention half of an `EncoderDecoderCache`: 4.55 made caches a
    list of layer objects (`cache.layers[i].keys`); before, they are lists of tensors (`cache.key_cache[i]`)."""
    cross = cache.cross_attention_cache
    if _since(4, 55):
        layer = cross.layers[layer_idx]
        return layer.keys, layer.values
    return cross.key_cache[layer_idx], cross.value_cache[layer_idx]


def pop_cache_argument(past_key_values, kwargs: dict):
    """The key/value cache given to `forward`: 5.24 renamed `past_key_values` to `cache` (generate passes `cache=`,
    output classes name the field `cache` and map the old name onto it); before, it is `past_key_values`. Either name
    is accepted, not both."""
    cache = kwargs.pop("cache", None)
    if cache is not None and past_key_values is not None:
        raise ValueError("Pass the key/value cache as `past_key_values` or `cache`, not both.")
    return past_key_values if cache is None else cache


# 5.24 names the cache field of every output class `cache` (assigning `past_key_values=` still works, with a warning);
# before, it is `past_key_values`. Outputs are built and read under the installed release's name.
CACHE_FIELD = "cache" if _since(5, 24) else "past_key_values"


def forget_loaded_weight_names(model) -> None:
    """5.x records at `from_pretrained` how a checkpoint's weight names map onto the modules (e.g. DINOv2's
    `attention.attention.query` -> `attention.q_proj`), and `save_pretrained` writes the original names back from that
    record, so that every release can read the file. A module attached after loading (a vision tower) is not in the
    record: forgetting it makes `save_pretrained` derive the renamings from the model as it now is. 4.x renames
    nothing."""
    if getattr(model, "_weight_conversions", None) is not None:
        model._weight_conversions = None
