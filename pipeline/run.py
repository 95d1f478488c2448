"""One training run, train.py's job, in six steps: data -> model -> train -> evaluate -> report -> publish (the card
and the push)."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import shutil
import socket
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import datasets
import numpy as np
import transformers
from transformers import TrainingArguments, set_seed
from transformers.trainer import TRAINER_STATE_NAME

from gatedgpt2.data import (
    GroundedCollator,
    ImageEmbeddings,
    ImageStore,
    WorldFiles,
    WorldSpec,
    caption_dataset,
    gpt2_tokenizer,
    iter_text_lines,
    load_caption_shards,
    load_tokenizer,
    parse_revision_words,
    read_captions,
    text_dataset,
    text_files,
    train_tokenizer,
    with_shuffled_images,
    write_world,
)
from gatedgpt2.data.model_folder import check_local_model, check_weights_readable
from gatedgpt2.data.run_files import RunFiles
from gatedgpt2.eval.interpret.narrow_gate import knockout_table
from gatedgpt2.eval.world import evaluate_world
from gatedgpt2.hub_cards.card import write_card
from gatedgpt2.hub_cards.push import push_with_revisions
from gatedgpt2.trainer.arguments import DataArguments, ModelArguments
from gatedgpt2.trainer.launch import check_process_count, end_with_launcher
from gatedgpt2.trainer.lora import ImageKeyMasking, lora_model, quantization_config
from gatedgpt2.trainer.run_definition import check_resumed_run, run_definition
from gatedgpt2.trainer.training import Curriculum, GatedGPT2Trainer, remove_unfinished_saves
from modeling_gatedgpt import GatedGPT2Config, GatedGPT2ForCausalLM, ImageKind

from .report import gate_by_word_class, write_report

logger = logging.getLogger(__name__)


def generate_world(data_args: DataArguments) -> WorldFiles:
    """The embedded world of the data arguments (`world_*`), generated into `world_dir` unless it is there."""
    spec = WorldSpec(seed=data_args.world_seed, train_captions=data_args.world_captions,
                     train_sentences=data_args.world_sentences, version=data_args.world_version,
                     design=data_args.world_design)
    return WorldFiles(write_world(data_args.world_dir, spec))


def training_data(data_args: DataArguments) -> DataArguments:
    """The data a run reads: `data_args` itself, or, for a run on the embedded world (no text_dir, no caption_files),
    a copy pointed at the world's files (generated if missing). `data_args` is never changed, and the copy keeps its
    `evaluates_world`."""
    if not data_args.uses_world:
        return data_args
    world, kind = generate_world(data_args), data_args.image_kind
    return dataclasses.replace(
        data_args, text_dir=str(world.text_dir("train")), text_pattern=world.text_pattern("train"),
        eval_text_dir=str(world.text_dir("dev")), eval_text_pattern=world.text_pattern("dev"),
        caption_files=[str(world.captions("train"))], embedding_files=[str(world.caption_images("train", kind))],
        eval_caption_files=[str(world.captions("dev"))], eval_embedding_files=[str(world.caption_images("dev", kind))],
        eval_world=data_args.evaluates_world)


def build_tokenizer(data_args: DataArguments, model_args: ModelArguments):
    """The given tokenizer, else the starting checkpoint's, else GPT-2's (`gpt2_vocabulary`), else a new byte-level
    BPE trained on the training text."""
    source = data_args.tokenizer_name or model_args.model_name_or_path or model_args.init_from_gpt2
    if source and data_args.gpt2_vocabulary:
        raise ValueError(f"gpt2_vocabulary builds GPT-2's tokenizer, but {source} brings its own; give one of them.")
    if source:
        return load_tokenizer(source)
    if data_args.gpt2_vocabulary:
        return gpt2_tokenizer(data_args.block_size)

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
        train_captions = caption_dataset(captions, data_args.caption_files, tokenizer, block, cache)
        if data_args.image_pairing == "shuffled":
            train_captions = with_shuffled_images(train_captions, len(train_store), data_args.image_pairing_seed)
        parts.append(train_captions)
        stores = [train_store]
        if data_args.eval_caption_files:
            eval_captions, eval_store = load_caption_shards(data_args.eval_caption_files,
                                                            data_args.eval_embedding_files, image_dim)
            if eval_store.row_shape != train_store.row_shape:
                raise ValueError(f"eval_embedding_files rows have shape {eval_store.row_shape}, embedding_files rows "
                                 f"{train_store.row_shape}")
            evals["captions"] = caption_dataset(eval_captions, data_args.eval_caption_files, tokenizer, block, cache,
                                                first_image_index=len(train_store))
            stores.append(eval_store)
        images = ImageStore.concatenate(stores)  # each store scanned its shards once, when it was made
    if not parts:
        raise ValueError("no training data: give text_dir and/or caption_files (or neither, for the grounded world)")
    if data_args.max_eval_examples is not None:
        evals = {k: v.select(range(min(data_args.max_eval_examples, len(v)))) for k, v in evals.items()}
    train = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    return train, num_text, evals, images


def build_model(model_args: ModelArguments, data_args: DataArguments, tokenizer,
                image_shape: tuple | None) -> GatedGPT2ForCausalLM:
    if model_args.save_gpt2 and model_args.lora_r > 0:
        raise ValueError("save_gpt2 exports a whole model's text stream, but lora_r > 0 trains only an adapter.")
    overrides = model_args.config_overrides()
    new_model = {"preset": model_args.preset, "variant": model_args.variant}
    if model_args.model_name_or_path or model_args.init_from_gpt2:
        given = {name: value for name, value in new_model.items() if value}
        if given:
            source = "model_name_or_path" if model_args.model_name_or_path else "init_from_gpt2"
            raise ValueError(f"{given} build a new model, but {source} takes the architecture from its checkpoint; "
                             f"give one of them.")
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
    config = GatedGPT2Config.from_preset(model_args.preset or "default", model_args.variant, vocab_size=len(tokenizer),
                                         n_positions=data_args.block_size, bos_token_id=tokenizer.bos_token_id,
                                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                         **overrides)
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
    """Train, save, evaluate, report and publish; returns the summary written to report.json."""
    started = time.time()
    end_with_launcher()
    configure_logging(training_args)
    check_process_count(training_args)
    with claimed_output_dir(training_args, data_args.overwrite_output_dir):
        # the Trainer would push the whole output folder; the package pushes the checkpoint, its card and revisions
        push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False
        with training_args.main_process_first(desc="grounded world, tokenizer and datasets"):
            data = training_data(data_args)
            tokenizer, train, num_text, evals, images = prepare_data(model_args, data)
        set_seed(training_args.seed)
        trainer = build_trainer(model_args, data, training_args, tokenizer, train, num_text, evals, images, callbacks)
        trainer.run_definition = run_definition(trainer.model.config, tokenizer, data, training_args,
                                                text_files(data.text_dir, data.text_pattern) if data.text_dir else [])
        if training_args.resume_from_checkpoint:
            check_resumed_run(training_args.resume_from_checkpoint, trainer.run_definition, data.resume_with_changes)
        knockout_before = None
        if trainer.image_key_masking is not None and data.evaluates_world and trainer.is_world_process_zero():
            knockout_before = world_knockout(trainer.model, tokenizer, data)

        summary = train_and_save(trainer, model_args, data, training_args, tokenizer, images)
        # Every process leaves the process group here, together, while the interpreter is whole: gloo's worker
        # threads still hold work objects at exit otherwise, and a process could abort in its teardown (SIGABRT,
        # "terminate called without an active exception") after a finished run. What follows is the main
        # process's alone.
        trainer.accelerator.wait_for_everyone()
        trainer.accelerator.end_training()
        if not trainer.is_world_process_zero():
            return summary
        if data.evaluates_world:
            summary.update(evaluate(trainer.model, tokenizer, data, images, knockout_before))
        if data.report:
            summary["wall_time_s"] = round(time.time() - started, 1)
            report(trainer, tokenizer, data, summary)
        if data.report or push_to_hub:
            summary.update(publish(training_args, push_to_hub))
        return summary


@contextmanager
def claimed_output_dir(training_args: TrainingArguments, overwrite: bool) -> Iterator[None]:
    """Step 0, before hours of data preparation: the output folder, held for the run's lifetime through
    `output_dir/.lock` (by the main process; the lock goes with the process however it ends), so that a second run
    into it fails at once instead of interleaving checkpoints. A folder that holds an earlier run is resumed
    (`resume_from_checkpoint`: true takes its newest finished checkpoint), replaced (`overwrite_output_dir`: its run
    outputs are deleted), or refused."""
    output_dir = Path(training_args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(RunFiles(output_dir).lock, "a+") as lock:
        if training_args.process_index == 0:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.seek(0)
                raise RuntimeError(f"output_dir {output_dir} is in use by another run ({lock.read().strip()}); wait "
                                   f"for it to end or choose another output_dir") from None
            lock.truncate(0)
            lock.write(f"pid {os.getpid()} on {socket.gethostname()}")
            lock.flush()
            remove_unfinished_saves(output_dir)
        earlier = sorted(p for pattern in RunFiles.OUTPUTS for p in output_dir.glob(pattern))
        if training_args.resume_from_checkpoint in ("True", "true", True):
            training_args.resume_from_checkpoint = last_finished_checkpoint(output_dir)
        elif training_args.resume_from_checkpoint:
            given = Path(training_args.resume_from_checkpoint)
            damage = checkpoint_damage(given) if given.is_dir() else "no such folder"
            if damage:
                raise ValueError(f"resume_from_checkpoint {given}: {damage}; give another checkpoint-N, or 'true' "
                                 f"for the newest usable one")
        elif earlier and not training_args.resume_from_checkpoint and not overwrite:
            names = ", ".join(p.name for p in earlier[:6])
            raise FileExistsError(f"output_dir {output_dir} already holds a run ({names}); resume it with "
                                  f"--resume_from_checkpoint true, choose another output_dir, or replace it with "
                                  f"--overwrite_output_dir true")
        elif earlier and overwrite and training_args.process_index == 0:
            logger.warning("overwrite_output_dir: deleting the earlier run in %s: %s", output_dir,
                           ", ".join(p.name for p in earlier))
            for path in earlier:
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        yield


def checkpoint_damage(checkpoint: Path) -> str | None:
    """What makes a `checkpoint-N` unusable for a resume, or None: a save cut off before its trainer state (a
    checkpoint written in place by an earlier version of the package, or a plain Trainer, gets it last), weights
    that safetensors cannot open, or resumable state (optimizer.pt, scheduler.pt, rng_state*.pth: torch.save's zip
    archives) that is empty or truncated."""
    try:
        json.loads((checkpoint / TRAINER_STATE_NAME).read_text())
    except (OSError, ValueError):
        return f"its save did not finish (no readable {TRAINER_STATE_NAME})"
    try:
        check_weights_readable(checkpoint)
    except ValueError as error:
        return str(error)
    for state in sorted([*checkpoint.glob("*.pt"), *checkpoint.glob("*.pth")]):
        try:
            with zipfile.ZipFile(state) as archive:
                broken = archive.testzip()
        except (OSError, zipfile.BadZipFile) as error:
            return f"{state.name} is damaged ({error or 'empty'}; {state.stat().st_size} bytes)"
        if broken is not None:
            return f"{state.name} is damaged (a bad CRC in its {broken})"
    return None


def last_finished_checkpoint(output_dir: Path) -> str:
    """The newest `checkpoint-N` of `output_dir` that a resume can use (`checkpoint_damage`); a damaged one is
    skipped with a warning naming it and what is wrong."""
    folder = Path(output_dir)
    numbered = [p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.removeprefix("checkpoint-").isdigit()]
    for checkpoint in sorted(numbered, key=lambda p: int(p.name.removeprefix("checkpoint-")), reverse=True):
        damage = checkpoint_damage(checkpoint)
        if damage is None:
            return str(checkpoint)
        logger.warning("Skipping %s: %s; resuming from an earlier checkpoint.", checkpoint, damage)
    raise FileNotFoundError(f"resume_from_checkpoint=true, but {folder} holds no finished checkpoint-N folder to "
                            f"resume from; leave resume_from_checkpoint out to train from scratch.")


def configure_logging(training_args: TrainingArguments) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO
                        if training_args.should_log else logging.WARNING)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    datasets.utils.logging.set_verbosity(training_args.get_process_log_level())


def prepare_data(model_args: ModelArguments, data_args: DataArguments):
    """Step 1. -> tokenizer, train dataset, number of text rows, eval datasets by modality, image store."""
    if model_args.model_name_or_path:
        check_local_model(model_args.model_name_or_path)
    tokenizer = build_tokenizer(data_args, model_args)
    image_dim = None
    if model_args.model_name_or_path:
        image_dim = GatedGPT2Config.from_pretrained(model_args.model_name_or_path).image_embed_dim
    return (tokenizer, *build_datasets(data_args, tokenizer, image_dim))


def build_trainer(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments, tokenizer,
                  train, num_text: int, evals: dict, images: ImageStore | None, callbacks) -> GatedGPT2Trainer:
    """Step 2: the model (new, from GPT-2, or a checkpoint with its LoRA adapter) in the Trainer."""
    if training_args.ddp_find_unused_parameters is None:
        # Text-only batches leave the whole image path without gradient; DDP must not wait for it.
        training_args.ddp_find_unused_parameters = True
    processes = max(training_args.world_size, 1)
    global_batch = training_args.per_device_train_batch_size * processes
    num_batches = int(np.ceil(len(train) / global_batch))  # the alternating round; mixed curricula are close
    model = build_model(model_args, data_args, tokenizer, images.row_shape if images else None)
    curriculum = Curriculum(data_args.curriculum, num_text, data_args.mix_ratio)
    run_steps = _total_steps(num_batches, training_args)
    if model.config.gate_temperature_clock == "image_batches":  # the curriculum's batches with images in the run
        sampler = curriculum.sampler(len(train), training_args.per_device_train_batch_size, training_args, processes)
        run_steps = sampler.image_batches_seen(run_steps, training_args.gradient_accumulation_steps)
    model.config.gate_temperature_steps = model_args.gate_temperature_steps_of(run_steps)
    check_vocabulary(model, tokenizer)
    masking = None
    if model_args.mask_cls_probability > 0 or model_args.mask_random_patches > 0:
        if images is None or ImageKind.of_row_shape(images.row_shape) is not ImageKind.CLS_PATCHES:
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
    trainer = GatedGPT2Trainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=evals or None,
        data_collator=GroundedCollator(tokenizer.pad_token_id, images, max_length=model.config.n_positions),
        processing_class=tokenizer,
        curriculum=curriculum,
        revision_words=parse_revision_words(data_args.revision_words),
        image_key_masking=masking,
        callbacks=callbacks,
    )
    asked = training_args.fsdp or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if asked and not trainer.is_fsdp_enabled:
        raise ValueError(f"FSDP was asked for (--fsdp or an accelerate FSDP config), but accelerate shards only "
                         f"across GPUs or other accelerators, and this run is on {training_args.device.type}: it "
                         f"would train unsharded instead. On CPUs, train without fsdp (torchrun or "
                         f"configs/accelerate/cpu_ddp.yaml run data-parallel).")
    return trainer


def train_and_save(trainer: GatedGPT2Trainer, model_args: ModelArguments, data_args: DataArguments,
                   training_args: TrainingArguments, tokenizer, images: ImageStore | None) -> dict:
    """Step 3: train (resuming if asked), save the checkpoint and state (and the text stream as a GPT-2), and
    evaluate the validation sets; -> the summary so far."""
    model = trainer.model
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_final_model()
    trainer.save_state()
    if model_args.save_gpt2 and trainer.is_world_process_zero():
        gpt2_dir = RunFiles(training_args.output_dir).gpt2_dir
        trainer.accelerator.unwrap_model(model).to_gpt2().save_pretrained(gpt2_dir)
        tokenizer.save_pretrained(gpt2_dir)
    summary = {"train": trainer.run_totals.whole_run(train_result.metrics, trainer.state),
               "parameters": model.num_parameters(), "model_arguments": asdict(model_args),
               "data_arguments": asdict(data_args), "image_shape": list(images.row_shape) if images else None}
    if trainer.eval_dataset is not None:
        summary["eval"] = trainer.evaluate()
    return summary


def evaluate(model, tokenizer, data_args: DataArguments, images: ImageStore | None, knockout_before: dict | None
             ) -> dict:
    """Step 4: the world's held-out sets, and for masked fine-tuning the knockout table before and after."""
    results = {"world_eval": world_evaluation(model, tokenizer, data_args, images.row_shape if images else None)}
    logger.info("World evaluation: %s", json.dumps(results["world_eval"]))
    if knockout_before is not None:
        results["knockout"] = {"before": knockout_before, "after": world_knockout(model, tokenizer, data_args)}
        logger.info("Knockout before / after masked fine-tuning: %s", json.dumps(results["knockout"]))
    return results


def report(trainer: GatedGPT2Trainer, tokenizer, data_args: DataArguments, summary: dict) -> None:
    """Step 5: report.json, the loss curves and the gate per word class of the held-out captions."""
    model = trainer.model
    gates = None
    if data_args.eval_caption_files and model.config.gate != "none":
        captions = [c for f in data_args.eval_caption_files for c in read_captions(f)]
        store = ImageStore(data_args.eval_embedding_files)
        gates = gate_by_word_class(model, tokenizer, captions, store.rows(range(len(store))))
    write_report(RunFiles(trainer.args.output_dir), summary, trainer.state.log_history, gates)


def publish(training_args: TrainingArguments, push_to_hub: bool) -> dict:
    """Step 6: the model card (an adapter-only folder keeps the card PEFT wrote), and the push to the Hub."""
    repo_id = training_args.hub_model_id or (Path(training_args.output_dir).name if push_to_hub else None)
    if (Path(training_args.output_dir) / "config.json").is_file():
        write_card(training_args.output_dir, repo_id=repo_id)
    if not push_to_hub:
        return {}
    from huggingface_hub import HfApi

    return {"pushed": push_with_revisions(training_args.output_dir, repo_id, bool(training_args.hub_private_repo),
                                          api=HfApi(token=training_args.hub_token))}


def world_evaluation(model, tokenizer, data_args: DataArguments, image_shape: tuple | None) -> dict:
    """The world's held-out sets, with the image kind the model was trained on."""
    kind = ImageKind.of_row_shape(image_shape) if image_shape is not None else ImageKind.GLOBAL
    return evaluate_world(model, tokenizer, WorldFiles(data_args.world_dir), kind, batch_size=64)


def world_knockout(model, tokenizer, data_args: DataArguments) -> dict:
    """The Narrow Gate knockout table on the world's held-out sets (CLS + patch tokens)."""
    world = WorldFiles(data_args.world_dir)
    images = ImageEmbeddings.load(world.eval_images(ImageKind.CLS_PATCHES))
    return knockout_table(model, tokenizer, world.eval_dir, images)
