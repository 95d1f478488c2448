"""Data: BabyLM text and caption readers, the memory-mapped image stores, the tokenizer, the collator, the BabyLM
revision schedule, the layout of a run's folder (`RunFiles`) and the embedded grounded world. Depends on the model
package only (`modeling_gatedgpt`)."""

from .collator import GroundedCollator
from .images import ImageEmbeddings, ImageStore
from .revisions import BABYLM_REVISION_WORDS, parse_revision_words, revision_name, revision_words
from .run_files import RunFiles, write_atomically, write_json
from .text import (
    caption_dataset,
    clean_line,
    decode_utf8,
    iter_text_lines,
    load_caption_shards,
    read_captions,
    text_dataset,
    text_files,
    tokenize_examples,
    with_shuffled_images,
)
from .tokenizer import (
    BOS,
    EOS,
    PAD,
    PreTrainedTokenizerFast,
    gpt2_tokenizer,
    load_tokenizer,
    portable_tokenizer,
    train_tokenizer,
)
from .world import WorldFiles, WorldSpec, write_world

__all__ = [
    "BABYLM_REVISION_WORDS", "BOS", "EOS", "PAD", "GroundedCollator", "ImageEmbeddings", "ImageStore",
    "PreTrainedTokenizerFast", "RunFiles", "WorldFiles", "WorldSpec", "caption_dataset", "clean_line", "decode_utf8",
    "gpt2_tokenizer", "iter_text_lines", "load_caption_shards", "load_tokenizer", "parse_revision_words",
    "portable_tokenizer", "read_captions", "revision_name", "revision_words", "text_dataset", "text_files",
    "tokenize_examples", "train_tokenizer", "with_shuffled_images", "write_atomically", "write_json", "write_world",
]
