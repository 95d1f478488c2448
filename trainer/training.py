"""The HF Trainer, taught the curriculum sampler, the gate schedule, the paper's metrics and BabyLM revisions."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints, seed_worker

from gatedgpt2.data.collator import GroundedCollator
from gatedgpt2.data.model_folder import discard_cut_off_install, install_model
from gatedgpt2.data.revisions import revision_name
from gatedgpt2.data.run_files import RunFiles, move_into_place, partial_path, unfinished_saves
from modeling_gatedgpt import gate_per_token

from .curriculum import CurriculumBatchSampler
from .lora import ImageKeyMasking
from .run_definition import RUN_DEFINITION
from .sharding import any_process_has_images, with_placeholder_images

logger = logging.getLogger(__name__)

FINAL_MODEL_STAGING = ".model.partial"  # inside output_dir, hidden: a resume's cleanup deletes it


@dataclass
class Curriculum:
    """The order of a run's batches: the text rows first in the dataset, then the caption rows."""

    name: str
    num_text: int
    mix_ratio: str = "natural"

    def sampler(self, num_rows: int, batch_size: int, args, num_processes: int,
                num_words: np.ndarray | None = None) -> CurriculumBatchSampler:
        """The batch sampler of a run over `num_rows` rows (its seed: the TrainingArguments' data_seed, else seed)."""
        return CurriculumBatchSampler(
            num_text=self.num_text, num_captions=num_rows - self.num_text, curriculum=self.name,
            batch_size=batch_size, num_processes=num_processes,
            seed=args.data_seed if args.data_seed is not None else args.seed, mix_ratio=self.mix_ratio,
            num_words=num_words)


class GateTemperatureCallback(TrainerCallback):
    """Anneals the hard gate's Gumbel temperature by `config.gate_temperature_clock`: optimizer steps, or the batches
    with images among them (counted by the curriculum sampler). Both follow from `global_step`, so a resumed run
    continues the schedule."""

    def __init__(self, trainer: "GatedGPT2Trainer"):
        self.trainer = trainer

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if model is None or model.config.gate != "hard":
            return
        clock = state.global_step
        if model.config.gate_temperature_clock == "image_batches":
            sampler = self.trainer.curriculum_sampler
            if sampler is None:
                raise ValueError("gate_temperature_clock='image_batches' counts the curriculum's batches with "
                                 "images; this run has no curriculum")
            clock = sampler.image_batches_seen(state.global_step, args.gradient_accumulation_steps)
        model.set_gate_temperature(model.config.gate_temperature_at(clock))


class _CurriculumEpochCallback(TrainerCallback):
    # The Trainer's own set_epoch does not reach a batch sampler under both SkipBatchSampler and BatchSamplerShard
    # (a multi-process resume mid-epoch), so the epoch is also set here, from the state the checkpoint restored.
    def __init__(self, trainer: "GatedGPT2Trainer"):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.trainer.curriculum_sampler is not None:
            self.trainer.curriculum_sampler.set_epoch(math.floor(state.epoch or 0))


class WordsSeenRevisionsCallback(TrainerCallback):
    """Saves the model as `revisions/chck_<N>M` (BabyLM naming) when the words seen cross each threshold."""

    def __init__(self, trainer: "GatedGPT2Trainer", thresholds: list[int]):
        self.trainer, self.thresholds = trainer, thresholds

    def on_step_end(self, args, state, control, **kwargs):
        sampler = self.trainer.curriculum_sampler
        words = sampler.words_seen(state.global_step, args.gradient_accumulation_steps)
        before = sampler.words_seen(state.global_step - 1, args.gradient_accumulation_steps)
        for threshold in self.thresholds:
            if before < threshold <= words:
                final = RunFiles(args.output_dir).revision(threshold)
                staged = partial_path(final)
                with disk_full_explained(f"revision {revision_name(threshold)}", staged):
                    self.trainer.save_model(staged)
                self.trainer.accelerator.wait_for_everyone()
                if args.should_save:
                    move_into_place(staged, final)


class RunTotals(TrainerCallback, ExportableState):
    """Training time and training loss summed over every session of a run. They travel in each checkpoint's
    trainer state, so a resumed run reports the whole run, not only the part after its last checkpoint (the
    Trainer's `train_runtime` / `train_loss`). The loss sum is of the logged losses (each the mean of its logging
    interval), so steps of a killed session after its last log are not in it: `loss_steps` says how many are."""

    def __init__(self):
        self.earlier_seconds, self.session_start, self.first_step = 0.0, None, 0
        self.loss_sum, self.loss_steps, self.last_logged_step = 0.0, 0, 0
        self.earlier_loss_sum, self.earlier_loss_steps, self.complete = 0.0, 0, True

    def state(self) -> dict:
        return {"args": {}, "attributes": {"seconds": self.elapsed(), "loss_sum": self.loss_sum,
                                           "loss_steps": self.loss_steps}}

    def elapsed(self) -> float:
        running = time.monotonic() - self.session_start if self.session_start is not None else 0.0
        return self.earlier_seconds + running

    def on_train_begin(self, args, state, control, **kwargs):
        saved = state.stateful_callbacks.get(type(self).__name__, {}).get("attributes")
        # a checkpoint saved before this callback existed does not know its time
        self.complete = saved is not None or state.global_step == 0
        saved = saved or {"seconds": 0.0, "loss_sum": 0.0, "loss_steps": 0}
        self.earlier_seconds, self.session_start = saved["seconds"], time.monotonic()
        self.earlier_loss_sum, self.earlier_loss_steps = saved["loss_sum"], saved["loss_steps"]
        self.loss_sum, self.loss_steps = self.earlier_loss_sum, self.earlier_loss_steps
        self.first_step = self.last_logged_step = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs and state.global_step > self.last_logged_step:
            steps = state.global_step - self.last_logged_step
            self.loss_sum += logs["loss"] * steps
            self.loss_steps += steps
            self.last_logged_step = state.global_step

    def whole_run(self, session: dict, state) -> dict:
        """The Trainer's metrics of this session (renamed `session_*`), with the run's totals in their place:
        `train_runtime` (all sessions, None if a checkpoint did not record its time), `train_loss` (mean over the
        `loss_steps` steps whose loss was recorded; this session's exact mean for its own steps),
        `final_train_loss` (the last logged interval) and `resumed_from_step`."""
        session_steps = state.global_step - self.first_step
        steps = self.earlier_loss_steps + session_steps
        mean = (self.earlier_loss_sum + session["train_loss"] * session_steps) / steps if steps else float("nan")
        logged = [h["loss"] for h in state.log_history if "loss" in h]
        return {**session, "session_train_runtime": session["train_runtime"],
                "session_train_loss": session["train_loss"],
                "train_runtime": round(self.elapsed(), 4) if self.complete else None,
                "train_loss": mean, "loss_steps": steps, "global_step": state.global_step,
                "final_train_loss": logged[-1] if logged else session["train_loss"],
                "resumed_from_step": self.first_step or None}


def remove_unfinished_saves(output_dir: str | os.PathLike) -> None:
    """Cleans up after saves that a kill cut off: the final model's files if their replacement was cut off
    (`install_model`), a partial folder (`.model.partial`, `.checkpoint-N.partial`, `revisions/.chck_*.partial`) is
    deleted; a finished folder that was renamed aside to be replaced (`.checkpoint-N.replaced`) goes back into
    place if its replacement never arrived, and is deleted otherwise."""
    output_dir = Path(output_dir)
    deleted = discard_cut_off_install(output_dir)
    if deleted:
        logger.warning("Deleting the final model of %s (%s): its save did not finish (the run was stopped while "
                       "writing it); resuming saves it again.", output_dir, ", ".join(p.name for p in deleted))
    for folder in (output_dir, RunFiles(output_dir).revisions_dir):
        partial, replaced_aside = unfinished_saves(folder)
        for unfinished in partial:
            logger.warning("Deleting %s: a save that did not finish (the run was stopped while writing it).",
                           unfinished)
            shutil.rmtree(unfinished)
        for replaced, final in replaced_aside:
            if final.exists():
                shutil.rmtree(replaced)
            else:
                logger.warning("Restoring %s: the run was stopped while replacing it.", final)
                replaced.rename(final)


@contextmanager
def disk_full_explained(what: str, staged: str):
    """A save that runs out of disk space deletes its partial folder and says so, naming what and where."""
    try:
        yield
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        shutil.rmtree(staged, ignore_errors=True)
        parent = os.path.dirname(os.path.abspath(staged))
        free = shutil.disk_usage(parent).free / 2**20
        raise OSError(error.errno, f"{what} could not be saved: no space left on the device of {parent} "
                                   f"({free:.0f} MiB free; {error}). The partial save was deleted; free space and "
                                   f"resume the run (--resume_from_checkpoint true), which starts from its newest "
                                   f"finished checkpoint.") from None


class GatedGPT2Trainer(Trainer):
    """`Trainer` with the curriculum's batch sampler and the paper's training metrics.

    Logged with the loss: `lm_loss`, `contrastive_loss`, `loss_text` / `loss_captions` (LM loss of text-only and image
    rows) and `gate_mean/layer_<i>` (mean gate over the real tokens of image rows, per cross-attention layer; 1 means
    all text, 0 all image). Evaluating a dict of datasets gives per-modality validation losses (`eval_text_loss`,
    `eval_captions_loss`).
    """

    def __init__(self, *args, curriculum: Curriculum | None = None, revision_words: list[int] | None = None,
                 image_key_masking: ImageKeyMasking | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.curriculum = curriculum
        self.image_key_masking = image_key_masking
        self.curriculum_sampler: CurriculumBatchSampler | None = None
        self.run_definition: dict | None = None  # saved in every checkpoint (trainer/run_definition.py)
        self._metric_sums = self._zero_metrics()
        self._checkpoint_staging: str | None = None
        if isinstance(self.data_collator, GroundedCollator):
            # its data layer refuses NaN/Inf embeddings and blank text, and it builds boolean image masks on the
            # CPU: the model need not read each batch's values back from the device again
            base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
            base.set_input_value_checks(False)
        self.add_callback(RunTotals())
        self.add_callback(GateTemperatureCallback(self))
        self.add_callback(_CurriculumEpochCallback(self))
        if revision_words:
            if curriculum is None:
                raise ValueError("revision_words needs a curriculum (it counts words through the batch sampler)")
            self.add_callback(WordsSeenRevisionsCallback(self, revision_words))

    @property
    def run_totals(self) -> RunTotals:
        # looked up, not kept: restore_callback_states_from_checkpoint replaces the callback with a new instance
        return next(c for c in self.callback_handler.callbacks if isinstance(c, RunTotals))

    # ------------------------------------------------------------------------------------------------ data

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        extra = getattr(self.data_collator, "input_columns", ())
        self._signature_columns += [c for c in extra if c not in self._signature_columns]

    def get_train_dataloader(self) -> DataLoader:
        if self.curriculum is None:
            return super().get_train_dataloader()
        dataset = self._remove_unused_columns(self.train_dataset, description="training")
        self.curriculum_sampler = self.curriculum.sampler(
            len(dataset), self._train_batch_size, self.args, self.accelerator.num_processes,
            num_words=(np.asarray(self.train_dataset["num_words"])
                       if "num_words" in self.train_dataset.column_names else None))
        loader = DataLoader(
            dataset,
            batch_sampler=self.curriculum_sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
            persistent_workers=self.args.dataloader_persistent_workers and self.args.dataloader_num_workers > 0,
            worker_init_fn=partial(seed_worker, num_workers=self.args.dataloader_num_workers,
                                   rank=self.args.process_index),
        )
        return self.accelerator.prepare(loader)

    def _run_epoch(self, *args, **kwargs):
        # A run resumed from its checkpoint at max_steps (how a cut-off final save is recovered) is done: the Trainer
        # would take one more step before it checks.
        if self.state.global_step >= self.state.max_steps > 0:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    # ------------------------------------------------------------------------------------------------ saving

    def _get_output_dir(self, trial) -> str:
        return self._checkpoint_staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's save of `checkpoint-N`, made atomic: it is written under `.checkpoint-N.partial/` and, once
        every process has written its part, renamed into place by the main process, which then applies
        `save_total_limit`. A kill mid-save leaves only the hidden partial folder, which a resume skips."""
        run_dir = super()._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        final = os.path.join(run_dir, name)
        self._checkpoint_staging = partial_path(final)
        if self.args.should_save and os.path.lexists(self._checkpoint_staging):
            shutil.rmtree(self._checkpoint_staging)  # left by a kill at this step in an earlier session
        self.accelerator.wait_for_everyone()
        try:
            with disk_full_explained(name, self._checkpoint_staging):
                super()._save_checkpoint(model, trial)
        finally:
            staged, self._checkpoint_staging = os.path.join(self._checkpoint_staging, name), None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            if self.run_definition is not None:
                Path(staged, RUN_DEFINITION).write_text(json.dumps(self.run_definition, indent=1, sort_keys=True))
            if self.state.best_model_checkpoint == staged:  # the Trainer recorded where it wrote
                self.state.best_model_checkpoint = final
                self.state.save_to_json(os.path.join(staged, TRAINER_STATE_NAME))
            move_into_place(staged, final)
            os.rmdir(os.path.dirname(staged))
            rotate_checkpoints(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()

    def save_final_model(self) -> None:
        """The trained model (and tokenizer) into `output_dir`, whole or not at all: written into
        `output_dir/.model.partial/` by every process's part, then installed by the main process
        (`install_model`), which replaces an earlier save's files instead of mixing with them."""
        staged = os.path.join(self.args.output_dir, FINAL_MODEL_STAGING)
        if self.args.should_save and os.path.lexists(staged):
            shutil.rmtree(staged)
        self.accelerator.wait_for_everyone()
        with disk_full_explained("the final model", staged):
            self.save_model(staged)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            install_model(staged, self.args.output_dir)
        self.accelerator.wait_for_everyone()

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        # With FSDP's SHARDED_STATE_DICT (configs/accelerate/fsdp.yaml) the Trainer saves no model at all; a model
        # folder (the final model, a revision) gets the full weights, gathered from every process. Checkpoints keep
        # the Trainer's sharded save (an internal call).
        plugin = getattr(self.accelerator.state, "fsdp_plugin", None)
        if self.is_fsdp_enabled and not _internal_call and "FULL_STATE_DICT" not in str(plugin.state_dict_type):
            self._save(output_dir or self.args.output_dir, state_dict=self.accelerator.get_state_dict(self.model))
            return
        super().save_model(output_dir, _internal_call)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """As the Trainer saves, but the training arguments go to JSON instead of a pickled `training_args.bin`, so
        the model folders (the output folder, `revisions/chck_*`) hold no pickle. The Trainer's resumable state in
        `checkpoint-N/` is pickled by torch.save (optimizer.pt, scheduler.pt, rng_state.pth); the Trainer reads it
        back with `weights_only=True`, and push never sends it."""
        super()._save(output_dir, state_dict)
        if not self.args.should_save:  # every process calls this (for the collectives of a sharded save); one writes
            return
        output_dir = output_dir or self.args.output_dir
        pickled = os.path.join(output_dir, "training_args.bin")
        if os.path.exists(pickled):
            os.remove(pickled)
        with open(os.path.join(output_dir, "training_args.json"), "w") as handle:
            handle.write(self.args.to_json_string())

    # ------------------------------------------------------------------------------------------------ loss

    def shards_parameters(self) -> bool:
        """Whether the parameters are sharded across processes, so that the sharding rule applies."""
        return self.is_fsdp_enabled or self.is_deepspeed_enabled

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """LM loss (normalised by the tokens of the whole accumulated, all-process batch when the Trainer gives
        `num_items_in_batch`) plus the auxiliary loss as a mean over micro-batches and processes."""
        inputs = {**inputs, "output_gates": model.training}
        images = getattr(self.data_collator, "images", None)
        if images is not None and self.shards_parameters():
            inputs = with_placeholder_images(inputs, images.row_shape, any_process_has_images(inputs))
        if num_items_in_batch is not None:
            inputs["num_items_in_batch"] = num_items_in_batch
        masking = self.image_key_masking if model.training else None
        with masking.applied(self.accelerator.unwrap_model(model), inputs) if masking else nullcontext():
            outputs = model(**inputs)
        scaled = num_items_in_batch is not None and self.model_accepts_loss_kwargs
        processes = self.accelerator.num_processes if scaled and self.args.average_tokens_across_devices else 1
        micro_batches = self.current_gradient_accumulation_steps if (scaled and model.training) else 1
        loss = self.accelerator.unwrap_model(model).total_loss(outputs.lm_loss, outputs.contrastive_loss,
                                                               micro_batches * processes)
        loss = loss * processes
        if model.training:
            self._accumulate_metrics(inputs, outputs)
        return (loss, outputs) if return_outputs else loss

    def _zero_metrics(self) -> dict[str, torch.Tensor]:
        # The same names on every process, whatever its batches held, so the reduction at logging time lines up.
        config = self.model.config
        names = ["loss_text", "loss_captions"] + (["contrastive_loss"] if config.contrastive else [])
        gated_layers = config.cross_attention_layer_indices if config.gate != "none" else []
        names += [f"gate_mean/layer_{i}" for i in gated_layers]
        return {key: torch.zeros((), device=self.args.device) for n in names for key in (n, f"{n}/count")}

    @torch.no_grad()
    def _accumulate_metrics(self, inputs, outputs) -> None:
        sums = self._metric_sums
        labels = inputs["labels"][:, 1:]
        token_loss = F.cross_entropy(outputs.logits[:, :-1].detach().float().transpose(1, 2), labels,
                                     ignore_index=-100, reduction="none")
        real = labels != -100
        # masks multiply rather than index, so that a step reads nothing back from the device
        image_mask = inputs.get("image_mask")
        if image_mask is None:
            image_mask = torch.zeros(labels.shape[0], dtype=torch.bool, device=labels.device)
        for name, rows in (("text", ~image_mask), ("captions", image_mask)):
            counted = real & rows[:, None]
            sums[f"loss_{name}"] += (token_loss * counted).sum()
            sums[f"loss_{name}/count"] += counted.sum()
        if outputs.contrastive_loss is not None:
            has_images = image_mask.any()  # a sharded run's placeholder images give a loss of 0 that is not counted
            sums["contrastive_loss"] += outputs.contrastive_loss.detach() * has_images
            sums["contrastive_loss/count"] += has_images
        if outputs.gates:
            mask = inputs["attention_mask"].bool() & image_mask[:, None]
            for layer, gate in zip(self.model.config.cross_attention_layer_indices, outputs.gates):
                sums[f"gate_mean/layer_{layer}"] += (gate_per_token(gate) * mask).sum()
                sums[f"gate_mean/layer_{layer}/count"] += mask.sum()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log, which every process reaches at the same step
            names = sorted(self._metric_sums)
            totals = self.accelerator.reduce(torch.stack([self._metric_sums[n].float() for n in names]), "sum")
            totals = dict(zip(names, totals.tolist()))
            tokens = totals["loss_text/count"] + totals["loss_captions/count"]
            if tokens:
                logs["lm_loss"] = round((totals["loss_text"] + totals["loss_captions"]) / tokens, 4)
            for name, value in totals.items():
                if not name.endswith("/count") and totals[f"{name}/count"] > 0:
                    logs[name] = round(value / totals[f"{name}/count"], 4)
            if self.curriculum_sampler is not None and self.curriculum_sampler.num_words is not None:
                logs["words_seen"] = self.curriculum_sampler.words_seen(self.state.global_step,
                                                                        self.args.gradient_accumulation_steps)
            self._metric_sums = self._zero_metrics()
        super().log(logs, start_time)
