"""Flat metrics of one trained model, for comparing runs (the sweep's tables): the gate analysis summarised, the
Narrow Gate knockout and attention shares, and zero-shot accuracies with an optional words-seen learning curve."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gatedgpt2.data import (
    ImageEmbeddings,
    RunFiles,
    WorldFiles,
    iter_text_lines,
    load_caption_shards,
    read_captions,
    text_files,
)
from gatedgpt2.data.factorial_world import cell, cell_name
from modeling_gatedgpt import ImageKind

from .babylm.zero_shot import scoring_of, zero_shot
from .checkpoint import load_checkpoint
from .interpret.gate_controls import gate_controls, write_report
from .interpret.gates import CONTENT_POS, FUNCTION_POS, Norms, gate_analysis, word_frequencies
from .interpret.narrow_gate import attention_profile, knockout_table


def word_class_gates(pooled: dict) -> dict:
    """Mean gate over content-word and function-word occurrences, from the per-POS groups."""
    groups = pooled["pos"]["groups"]
    result = {}
    for name, tags in (("content", CONTENT_POS), ("function", FUNCTION_POS)):
        chosen = [g for pos, g in groups.items() if pos in tags and isinstance(g, dict)]
        n = sum(g["n"] for g in chosen)
        result[f"gate_{name}"] = sum(g["mean"] * g["n"] for g in chosen) / n if n else None
    return result


def gate_metrics(model, tokenizer, world: WorldFiles, image_kind: ImageKind | str, out_dir: Path,
                 norms: list[Norms]) -> dict:
    """The gate analysis of the world's dev captions (word frequencies from its training text and captions), as the
    mean gate, content vs function words, the POS test statistic, and with `norms` (the first: concreteness) the
    correlation and the regression coefficients."""
    captions, store = load_caption_shards([world.captions("dev")], [world.caption_images("dev", image_kind)])
    frequencies = word_frequencies([*iter_text_lines(text_files(world.text_dir("train"))),
                                    *read_captions(world.captions("train"))])
    summary = gate_analysis(model, tokenizer, captions, store, out_dir, norms, frequencies, progress=False)
    pooled = summary["by_layer"]["pooled"]
    metrics = {"gate_mean": pooled["mean_gate"], **word_class_gates(pooled)}
    if pooled["pos"]["kruskal_wallis"]:
        metrics["gate_pos_kw_h"] = pooled["pos"]["kruskal_wallis"]["H"]
        metrics["gate_pos_epsilon_squared"] = pooled["pos"]["kruskal_wallis"]["epsilon_squared"]
    if pooled["pos_by_word_type"]["kruskal_wallis"]:
        metrics["gate_pos_by_word_type_epsilon_squared"] = pooled["pos_by_word_type"]["kruskal_wallis"][
            "epsilon_squared"]
        metrics["gate_pos_by_word_type_p"] = pooled["pos_by_word_type"]["kruskal_wallis"]["p"]
    if pooled["pos_within_word_type_null"]:
        metrics["gate_pos_within_word_type_percentile"] = pooled["pos_within_word_type_null"]["percentile"]
    if norms:
        metrics["gate_concreteness_rho"] = pooled["norms"][norms[0].name]["per_occurrence"]["rho"]
        metrics["gate_concreteness_rho_by_type"] = pooled["norms"][norms[0].name]["per_word_type"]["rho"]
        terms = {"concreteness (z)": "concreteness", "log frequency (z)": "log_frequency",
                 "content x concreteness (z)": "content_x_concreteness",
                 "content x log frequency (z)": "content_x_log_frequency"}
        for fit in (pooled["regression"], pooled["regression_content_interactions"]):
            for term, values in (fit or {}).get("coefficients", {}).items():
                if term in terms and f"gate_beta_{terms[term]}" not in metrics:
                    metrics[f"gate_beta_{terms[term]}"] = values["beta"]
                    metrics[f"gate_beta_{terms[term]}_p"] = values["p"]
    return metrics


def factorial_metrics(model, tokenizer, world: WorldFiles, image_kind: ImageKind | str, out_dir: Path,
                      **options) -> dict:
    """The factorial world's dev captions through `gate_controls`, by word class (content/function) and by cell
    (class x depicted x concreteness), the next word's being decided by the scene as the dependence: the class effect,
    the within-word gap and the next-word correlation, with CIs and null percentiles (gate_controls.json, twice).
    `options` go to `gate_controls` (untrained_draws, permutations, resamples)."""
    captions, store = load_caption_shards([world.captions("dev")], [world.caption_images("dev", image_kind)])

    def depicted(word: str) -> bool:
        return bool(cell(word) and cell(word)[1])

    reports = gate_controls(model, tokenizer, captions, store,
                            {"class": lambda w: (cell(w) or (None,))[0], "cell": cell_name}, depicted, **options)
    for grouping, report in reports.items():
        write_report(report, out_dir / grouping)
    by_cell = reports["cell"]
    metrics = {"gate_mean": by_cell["mean_gate"],
               "gate_cell_epsilon_squared": by_cell["class_effect"]["epsilon_squared"],
               "gate_cell_epsilon_squared_untrained_percentile": by_cell["class_effect"]["untrained"]["percentile"]}
    for name, entry in reports["class"]["classes"].items():
        gap, rho = entry["within_word_gap"], entry["next_word_rho"]
        metrics.update({f"gate_{name}": entry["mean_gate"], f"gap_{name}": gap["gap"]})
        if gap["gap"] is not None:
            metrics.update({f"gap_{name}_ci_low": gap["ci95"][0], f"gap_{name}_ci_high": gap["ci95"][1],
                            f"gap_{name}_untrained_percentile": gap["untrained"]["percentile"],
                            f"gap_{name}_shuffled_percentile": gap["shuffled_within_words"]["percentile"]})
        metrics[f"next_word_rho_{name}"] = rho["rho"]
        metrics[f"gate_{name}_before_depicted"] = entry["mean_gate_before"]["dependent"]
        metrics[f"gate_{name}_before_not_depicted"] = entry["mean_gate_before"]["independent"]
        metrics[f"next_benefit_{name}_before_depicted"] = entry["next_benefit"]["before_dependent"]
        metrics[f"next_benefit_{name}_before_not_depicted"] = entry["next_benefit"]["before_independent"]
    return metrics


@torch.no_grad()
def loss_per_token(model, examples, collator, batch_size: int = 32, max_examples: int | None = None) -> dict:
    """The mean next-token loss over every predicted token of `examples` (rows with `input_ids` and `image_index`,
    batched by `collator`), not the mean of batch means; `max_examples` takes that many spread evenly over the set,
    so every source of a concatenated dev set is represented."""
    model.eval()
    chosen = np.arange(len(examples))
    if max_examples is not None and max_examples < len(examples):
        chosen = np.unique(np.linspace(0, len(examples) - 1, max_examples).round().astype(int))
    total, tokens = 0.0, 0
    for start in range(0, len(chosen), batch_size):
        batch = collator([examples[int(i)] for i in chosen[start : start + batch_size]])
        labels = batch.pop("labels")
        logits = model(**{k: v.to(model.device) for k, v in batch.items()}).logits[:, :-1].float()
        targets = labels[:, 1:].to(model.device)
        total += float(torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100,
                                                         reduction="sum"))
        tokens += int((targets != -100).sum())
    return {"loss": total / tokens, "tokens": tokens, "examples": int(len(chosen))}


def knockout_metrics(model, tokenizer, world: WorldFiles) -> dict:
    """VQA with the CLS token, the patches or one random patch knocked out (`vqa_knockout_<condition>`: post-softmax
    weights zeroed; `vqa_knockout_renormalised_<condition>`: keys masked, the rest renormalised), and the CLS token's
    share of text-to-image attention: a narrow gate is a CLS token whose removal costs what removing the image costs."""
    images = ImageEmbeddings.load(world.eval_images(ImageKind.CLS_PATCHES))
    tables = knockout_table(model, tokenizer, world.eval_dir, images, tasks=("vqa",))
    metrics = {f"vqa_knockout_{condition}": scores["vqa"] for condition, scores in tables["zeroed"].items()}
    metrics.update({f"vqa_knockout_renormalised_{condition}": scores["vqa"]
                    for condition, scores in tables["renormalised"].items() if condition != "none"})
    captions, store = load_caption_shards([world.captions("dev")],
                                          [world.caption_images("dev", ImageKind.CLS_PATCHES)])
    rows = np.arange(min(len(captions), 512))
    profile = attention_profile(model, tokenizer, [captions[i] for i in rows], store.rows(rows), rows)
    metrics["cls_attention_share"] = float(np.mean([layer["cls"] for layer in profile.values()]))
    metrics["max_image_token_share"] = float(np.mean([max(layer["cls"], layer["max_patch"])
                                                      for layer in profile.values()]))
    return metrics


def zero_shot_metrics(model, tokenizer, data_dir: Path, tasks: list[str], fast: bool, run_dir: Path,
                      revisions: bool = False) -> dict:
    """The zero-shot tasks' scores (accuracy; Spearman's rho for the WUG tasks); with `revisions` also a learning curve
    over the run's words-seen revisions (train.py's `revision_words`) and the final model: {"words": [...], "<task>":
    [...]} under "curve"."""
    def score(network, out_dir: Path) -> dict:
        results = zero_shot(network, tokenizer, data_dir, tasks, fast=fast, out_dir=out_dir, progress=False)
        return {name: scoring_of(name).headline(task) for name, task in results["tasks"].items()}

    metrics = score(model, RunFiles(run_dir).zero_shot_dir)
    if revisions:
        run = RunFiles(run_dir)
        curve = {"words": [], **{task: [] for task in metrics}}
        for words, revision in run.revisions():
            network, _ = load_checkpoint(str(revision), device="cpu")
            scores = score(network, run.zero_shot_dir / revision.name)
            curve["words"].append(words)
            for task in metrics:
                curve[task].append(scores[task])
        curve["words"].append(run.final_words_seen())
        for task in metrics:
            curve[task].append(metrics[task])
        metrics["curve"] = curve
    return metrics
