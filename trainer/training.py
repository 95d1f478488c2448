"""The HF Trainer, taught the curriculum sampler, the gate schedule, the paper's metrics and BabyLM revisions."""

from __future__ import annotations

import math
import os
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import seed_worker

from gatedgpt2.data.revisions import revision_name
from modeling_gatedgpt import gate_per_token

from .curriculum import CurriculumBatchSampler
from .lora import ImageKeyMasking


@dataclass
class Curriculum:
    name: str
    num_text: int
    mix_ratio: str = "natural"


class GateTemperatureCallback(TrainerCallback):
    """Anneals the hard gate's Gumbel temperature from `global_step`, so a resumed run continues the schedule."""

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if model is not None and model.config.gate == "hard":
            model.set_gate_temperature(model.config.gate_temperature_at(state.global_step))


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
                self.trainer.save_model(os.path.join(args.output_dir, "revisions", revision_name(threshold)))


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
        self._metric_sums = self._zero_metrics()
        self.add_callback(GateTemperatureCallback())
        self.add_callback(_CurriculumEpochCallback(self))
        if revision_words:
            if curriculum is None:
                raise ValueError("revision_words needs a curriculum (it counts words through the batch sampler)")
            self.add_callback(WordsSeenRevisionsCallback(self, revision_words))

    # ------------------------------------------------------------------------------------------------ data

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        extra = getattr(self.data_collator, "input_columns", ())
        self._signature_columns += [c for c in extra if c not in self._signature_columns]

    def get_train_dataloader(self) -> DataLoader:
        if self.curriculum is None:
            return super().get_train_dataloader()
        dataset = self._remove_unused_columns(self.train_dataset, description="training")
        self.curriculum_sampler = CurriculumBatchSampler(
            num_text=self.curriculum.num_text,
            num_captions=len(dataset) - self.curriculum.num_text,
            curriculum=self.curriculum.name,
            batch_size=self._train_batch_size,
            num_processes=self.accelerator.num_processes,
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
            mix_ratio=self.curriculum.mix_ratio,
            num_words=(np.asarray(self.train_dataset["num_words"])
                       if "num_words" in self.train_dataset.column_names else None),
        )
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

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """As the Trainer saves, but the training arguments go to JSON instead of a pickled `training_args.bin`, so
        the model folders (the output folder, `revisions/chck_*`) hold no pickle. The Trainer's resumable state in
        `checkpoint-N/` is pickled by torch.save (optimizer.pt, scheduler.pt, rng_state.pth); the Trainer reads it
        back with `weights_only=True`, and push never sends it."""
        super()._save(output_dir, state_dict)
        output_dir = output_dir or self.args.output_dir
        pickled = os.path.join(output_dir, "training_args.bin")
        if os.path.exists(pickled):
            os.remove(pickled)
        with open(os.path.join(output_dir, "training_args.json"), "w") as handle:
            handle.write(self.args.to_json_string())

    # ------------------------------------------------------------------------------------------------ loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """LM loss (normalised by the tokens of the whole accumulated, all-process batch when the Trainer gives
        `num_items_in_batch`) plus the auxiliary loss as a mean over micro-batches and processes."""
        inputs = {**inputs, "output_gates": model.training}
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
        names += [f"gate_mean/layer_{i}" for i in (config.cross_attention_layer_indices if config.gate != "none" else [])]
        return {key: torch.zeros((), device=self.args.device) for n in names for key in (n, f"{n}/count")}

    @torch.no_grad()
    def _accumulate_metrics(self, inputs, outputs) -> None:
        sums = self._metric_sums
        labels = inputs["labels"][:, 1:]
        token_loss = F.cross_entropy(outputs.logits[:, :-1].detach().float().transpose(1, 2), labels,
                                     ignore_index=-100, reduction="none")
        real = labels != -100
        image_rows = inputs.get("image_mask")
        if image_rows is None:
            image_rows = torch.zeros(labels.shape[0], dtype=torch.bool, device=labels.device)
        for name, rows in (("text", ~image_rows), ("captions", image_rows)):
            sums[f"loss_{name}"] += token_loss[rows].sum()
            sums[f"loss_{name}/count"] += real[rows].sum()
        if outputs.contrastive_loss is not None:
            sums["contrastive_loss"] += outputs.contrastive_loss.detach()
            sums["contrastive_loss/count"] += 1
        if outputs.gates and image_rows.any():
            mask = inputs["attention_mask"][image_rows].bool()
            for layer, gate in zip(self.model.config.cross_attention_layer_indices, outputs.gates):
                per_token = gate_per_token(gate[image_rows])
                sums[f"gate_mean/layer_{layer}"] += per_token[mask].sum()
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
