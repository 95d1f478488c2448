"""One training run: data -> tokenizer -> model -> Trainer -> checkpoint -> world evaluation -> report."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import datasets
import numpy as np
import transformers
from transformers import TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from modeling_gatedgpt import GatedGPT2Config, GatedGPT2ForCausalLM

from .arguments import DataArguments, ModelArguments
from .data import (GroundedCollator, ImageStore, caption_dataset, iter_text_lines, load_caption_shards, load_tokenizer,
                   read_captions, text_dataset, text_files, train_tokenizer)
from .lora import ImageKeyMasking, lora_model, quantization_config
from .training import Curriculum, GatedGPT2Trainer, parse_revision_words
from .world import WorldSpec, write_world

logger = logging.getLogger(__name__)


def resolve_world(data_args: DataArguments) -> None:
    """Point the data arguments at the embedded world, generating it if needed."""
    spec = WorldSpec(seed=data_args.world_seed, train_captions=data_args.world_captions,
                     train_sentences=data_args.world_sentences)
    world = write_world(data_args.world_dir, spec)
    kind = "tokens" if data_args.image_tokens == "cls_patches" else "embeddings"
    data_args.text_dir, data_args.text_pattern = str(world / "text" / "train"), "*.train"
    data_args.eval_text_dir, data_args.eval_text_pattern = str(world / "text" / "dev"), "*.dev"
    data_args.caption_files = [str(world / "captions" / "train_captions.json")]
    data_args.embedding_files = [str(world / "captions" / f"train_{kind}.npy")]
    data_args.eval_caption_files = [str(world / "captions" / "dev_captions.json")]
    data_args.eval_embedding_files = [str(world / "captions" / f"dev_{kind}.npy")]


def build_tokenizer(data_args: DataArguments, model_args: ModelArguments):
    """The given tokenizer, else the starting checkpoint's, else a new byte-level BPE trained on the training text."""
    source = data_args.tokenizer_name or model_args.model_name_or_path or model_args.init_from_gpt2
    if source:
        return load_tokenizer(source)

    def lines():
        if data_args.text_dir:
            yield from iter_text_lines(text_files(data_args.text_dir, data_args.text_pattern))
        for f in data_args.caption_files:
            yield from read_captions(f)
    return train_tokenizer(lines(), data_args.vocab_size, data_args.block_size)


def build_datasets(data_args: DataArguments, tokenizer, image_dim: int | None):
    """-> train dataset (text rows first, then captions), number of text rows, eval datasets by modality, images."""
    block, cache = data_args.block_size, data_args.cache_dir
    parts, evals = [], {}
    num_text = 0
    if data_args.text_dir:
        text = text_dataset(text_files(data_args.text_dir, data_args.text_pattern), tokenizer, block,
                            data_args.packing, cache)
        if data_args.max_text_examples is not None:
            text = text.select(range(min(data_args.max_text_examples, len(text))))
        parts.append(text)
        num_text = len(text)
        if data_args.eval_text_dir:
            evals["text"] = text_dataset(text_files(data_args.eval_text_dir, data_args.eval_text_pattern), tokenizer,
                                         block, data_args.packing, cache)
    images = None
    if data_args.caption_files:
        captions, train_store = load_caption_shards(data_args.caption_files, data_args.embedding_files, image_dim)
        parts.append(caption_dataset(captions, data_args.caption_files, tokenizer, block, cache))
        store_files = list(train_store.files)
        if data_args.eval_caption_files:
            eval_captions, eval_store = load_caption_shards(data_args.eval_caption_files,
                                                            data_args.eval_embedding_files, image_dim)
            if eval_store.row_shape != train_store.row_shape:
                raise ValueError(f"eval_embedding_files rows have shape {eval_store.row_shape}, embedding_files rows "
                                 f"{train_store.row_shape}")
            evals["captions"] = caption_dataset(eval_captions, data_args.eval_caption_files, tokenizer, block, cache,
                                                first_image_index=len(train_store))
            store_files += eval_store.files
        images = ImageStore(store_files, image_dim)
    if not parts:
        raise ValueError("no training data: give text_dir and/or caption_files (or neither, for the grounded world)")
    if data_args.max_eval_examples is not None:
        evals = {k: v.select(range(min(data_args.max_eval_examples, len(v)))) for k, v in evals.items()}
    train = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    return train, num_text, evals, images


def build_model(model_args: ModelArguments, data_args: DataArguments, tokenizer, image_shape: tuple | None,
                total_steps: int) -> GatedGPT2ForCausalLM:
    if model_args.save_gpt2 and model_args.lora_r > 0:
        raise ValueError("save_gpt2 exports a whole model's text stream, but lora_r > 0 trains only an adapter.")
    overrides = model_args.config_overrides()
    if model_args.gate_temperature_steps is None:
        overrides["gate_temperature_steps"] = max(total_steps, 1)
    if model_args.model_name_or_path:
        quantization = quantization_config(model_args.load_in_bits) if model_args.load_in_bits else None
        model = GatedGPT2ForCausalLM.from_pretrained(model_args.model_name_or_path, quantization_config=quantization,
                                                     **overrides)
        if model_args.lora_r > 0:
            model = lora_model(model, model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout,
                               model_args.lora_target_modules,
                               [m for m in model_args.lora_modules_to_save.split(",") if m])
        return model
    if model_args.lora_r > 0 or model_args.load_in_bits:
        raise ValueError("lora_r / load_in_bits fine-tune a trained model: give its checkpoint as model_name_or_path.")
    if image_shape is not None:
        overrides.setdefault("image_embed_dim", image_shape[-1])
    if model_args.init_from_gpt2:
        return GatedGPT2ForCausalLM.from_gpt2(model_args.init_from_gpt2, **overrides)
    config = GatedGPT2Config(vocab_size=len(tokenizer), n_positions=data_args.block_size,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id, **overrides)
    config._attn_implementation = model_args.attn_implementation
    return GatedGPT2ForCausalLM(config)


def check_vocabulary(model: GatedGPT2ForCausalLM, tokenizer) -> None:
    if len(tokenizer) > model.config.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
                         f"{model.config.vocab_size}; pass the tokenizer the checkpoint was trained with")


def _total_steps(num_batches: int, args: TrainingArguments) -> int:
    if args.max_steps > 0:
        return args.max_steps
    return int(np.ceil(num_batches / args.gradient_accumulation_steps) * args.num_train_epochs)


def run(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments,
        callbacks: list | None = None) -> dict:
    """Train, save, evaluate and report; returns the summary written to report.json."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO
                        if training_args.should_log else logging.WARNING)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    datasets.utils.logging.set_verbosity(training_args.get_process_log_level())
    started = time.time()
    if training_args.ddp_find_unused_parameters is None:
        # Text-only batches leave the whole image path without gradient; DDP must not wait for it.
        training_args.ddp_find_unused_parameters = True

    uses_world = data_args.uses_world
    with training_args.main_process_first(desc="grounded world, tokenizer and datasets"):
        if uses_world:
            resolve_world(data_args)
        tokenizer = build_tokenizer(data_args, model_args)
        image_dim = None
        if model_args.model_name_or_path:
            image_dim = GatedGPT2Config.from_pretrained(model_args.model_name_or_path).image_embed_dim
        train, num_text, evals, images = build_datasets(data_args, tokenizer, image_dim)

    set_seed(training_args.seed)
    processes = max(training_args.world_size, 1)
    global_batch = training_args.per_device_train_batch_size * processes
    num_batches = int(np.ceil(len(train) / global_batch))  # the alternating round; mixed curricula are close
    model = build_model(model_args, data_args, tokenizer, images.row_shape if images else None,
                        _total_steps(num_batches, training_args))
    check_vocabulary(model, tokenizer)
    masking = None
    if model_args.mask_cls_probability > 0 or model_args.mask_random_patches > 0:
        if images is None or len(images.row_shape) != 2:
            raise ValueError("mask_cls_probability / mask_random_patches need CLS + patch image tokens "
                             f"(embeddings of shape (N, P, D)); the images here have row shape "
                             f"{None if images is None else images.row_shape}.")
        masking = ImageKeyMasking(model_args.mask_cls_probability, model_args.mask_random_patches, training_args.seed)
    logger.info("GatedGPT2: %.2fM parameters, %d text + %d caption examples, curriculum %s",
                model.num_parameters() / 1e6, num_text, len(train) - num_text, data_args.curriculum)
    if model_args.lora_r > 0:
        trainable, total = model.get_nb_trainable_parameters()
        logger.info("LoRA rank %d: %.3fM of %.2fM parameters are trained", model_args.lora_r, trainable / 1e6,
                    total / 1e6)

    # the Trainer would push the whole output folder; the package pushes the checkpoint, its card and revisions
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False
    trainer = GatedGPT2Trainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=evals or None,
        data_collator=GroundedCollator(tokenizer.pad_token_id, images),
        processing_class=tokenizer,
        curriculum=Curriculum(data_args.curriculum, num_text, data_args.mix_ratio),
        revision_words=parse_revision_words(data_args.revision_words),
        image_key_masking=masking,
        callbacks=callbacks,
    )
    evaluate_world = data_args.eval_world or (uses_world and data_args.eval_world is None)
    knockout_before = None
    if masking is not None and evaluate_world and trainer.is_world_process_zero():
        knockout_before = world_knockout(model, tokenizer, data_args)
    resume = training_args.resume_from_checkpoint
    if resume in ("True", "true", True):
        resume = get_last_checkpoint(training_args.output_dir)
    train_result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()
    trainer.save_state()
    if model_args.save_gpt2 and trainer.is_world_process_zero():
        gpt2_dir = Path(training_args.output_dir) / "gpt2"
        trainer.accelerator.unwrap_model(model).to_gpt2().save_pretrained(gpt2_dir)
        tokenizer.save_pretrained(gpt2_dir)
    summary = {"train": train_result.metrics, "parameters": model.num_parameters(),
               "model_arguments": asdict(model_args), "data_arguments": asdict(data_args),
               "image_shape": list(images.row_shape) if images else None}
    if evals:
        summary["eval"] = trainer.evaluate()

    if trainer.is_world_process_zero():
        if evaluate_world:
            summary["world_eval"] = world_evaluation(model, tokenizer, data_args, images.row_shape if images else None)
            logger.info("World evaluation: %s", json.dumps(summary["world_eval"]))
        if knockout_before is not None:
            summary["knockout"] = {"before": knockout_before, "after": world_knockout(model, tokenizer, data_args)}
            logger.info("Knockout before / after masked fine-tuning: %s", json.dumps(summary["knockout"]))
        if data_args.report:
            from .report import gate_by_word_class, write_report

            gates = None
            if data_args.eval_caption_files and model.config.gate != "none":
                captions = [c for f in data_args.eval_caption_files for c in read_captions(f)]
                store = ImageStore(data_args.eval_embedding_files)
                gates = gate_by_word_class(model, tokenizer, captions, store.rows(range(len(store))))
            summary["wall_time_s"] = round(time.time() - started, 1)
            write_report(Path(training_args.output_dir) / "report", summary, trainer.state.log_history, gates)
        if (data_args.report or push_to_hub) and (Path(training_args.output_dir) / "config.json").is_file():
            from hub_cards.card import write_card  # an adapter-only folder keeps the card PEFT wrote

            write_card(training_args.output_dir, repo_id=training_args.hub_model_id)
        if push_to_hub:
            from huggingface_hub import HfApi

            from hub_cards.push import push_with_revisions

            repo_id = training_args.hub_model_id or Path(training_args.output_dir).name
            summary["pushed"] = push_with_revisions(training_args.output_dir, repo_id,
                                                    bool(training_args.hub_private_repo),
                                                    api=HfApi(token=training_args.hub_token))
    return summary


def world_evaluation(model, tokenizer, data_args: DataArguments, image_shape: tuple | None) -> dict:
    """The world's held-out sets, with the image kind the model was trained on ((D,): global, (P, D): tokens)."""
    from eval.world import evaluate_world

    kind = "cls_patches" if image_shape is not None and len(image_shape) == 2 else "global"
    return evaluate_world(model, tokenizer, Path(data_args.world_dir) / "eval", kind, batch_size=64)


def world_knockout(model, tokenizer, data_args: DataArguments) -> dict:
    """The Narrow Gate knockout table on the world's held-out sets (CLS + patch tokens)."""
    from eval.images import ImageEmbeddings
    from eval.narrow_gate import knockout_table

    eval_dir = Path(data_args.world_dir) / "eval"
    return knockout_table(model, tokenizer, eval_dir, ImageEmbeddings.load(eval_dir / "images" / "tokens.npy"))
