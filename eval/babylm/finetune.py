"""BabyLM's (Super)GLUE fine-tuning with the HF Trainer and `GatedGPT2ForSequenceClassification`, writing what the
2025 pipeline's `finetune/run.py` writes (`<results>/<model>/<revision>/finetune/<task>/predictions.json` and
`results.txt`), so that its collate_preds.sh takes our outputs.

The data is the pipeline's `glue_filtered/<task>.{train,valid}.jsonl`, read into text pairs exactly as its
`finetune/dataset.py` reads them. What differs is the model: the pipeline puts its own head on `AutoModel` and, by
default, reads the first token, which in a causal decoder has seen nothing but itself; ours reads the last real
token, which has seen the whole input. Hyperparameters default to eval_finetuning.sh's (lr 3e-5, 10 epochs, 30 for
WSC, batch 32, 16 for BoolQ and MultiRC, seed 42), and as there the checkpoint best on the validation metric (F1 for
MRPC and QQP, accuracy otherwise) predicts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from gatedgpt2.data import decode_utf8
from gatedgpt2.data.run_files import write_atomically, write_json

from .tasks import jsonl_records

# task -> (fields before the separator, fields after it, template of the first part or None, labels, metric)
GLUE_TASKS = {
    "boolq": (("question",), ("passage",), None, 2, "accuracy"),
    "mnli": (("premise",), ("hypothesis",), None, 3, "accuracy"),
    "mrpc": (("sentence1",), ("sentence2",), None, 2, "f1"),
    "multirc": (("question", "answer"), ("paragraph",), "Question: {} Answer: {}", 2, "accuracy"),
    "qqp": (("question1",), ("question2",), None, 2, "f1"),
    "rte": (("sentence1",), ("sentence2",), None, 2, "accuracy"),
    "wsc": (("span2_text", "span1_text"), ("text",), 'Does "{}" refer to "{}" in this passage?', 2, "accuracy"),
}
BIG_BATCH_TASKS = ("boolq", "multirc")  # eval_finetuning.sh's batch size 16 for these long inputs


def read_glue(path: Path, task: str) -> tuple[list[tuple[str, str]], list[int]]:
    """(first part, second part) pairs and labels of a JSONL file, as the pipeline builds them."""
    first, second, template, labels, _ = GLUE_TASKS[task]
    pairs, targets = [], []
    for record, where in jsonl_records(decode_utf8(path.read_bytes(), str(path)).splitlines(), str(path)):
        missing = [f for f in (*first, *second, "label") if f not in record]
        if missing:
            raise ValueError(f"{where}: missing field(s) {missing} for {task}; the record has {sorted(record)}.")
        label = record["label"]
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < labels:
            raise ValueError(f"{where}: label must be an integer in [0, {labels}) for {task}, got {label!r}.")
        texts = [f for f in (*first, *second) if not isinstance(record[f], str)]
        if texts:
            raise ValueError(f"{where}: field(s) {texts} must be text for {task}, got "
                             f"{[type(record[f]).__name__ for f in texts]}.")
        parts = [record[f] for f in first]
        pairs.append((template.format(*parts) if template else " ".join(parts), " ".join(record[f] for f in second)))
        targets.append(label)
    if not pairs:
        raise ValueError(f"{path}: no records.")
    return pairs, targets


def classification_metrics(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, and for two classes F1 of class 1 and Matthews' correlation (the pipeline's sklearn metrics)."""
    metrics = {"accuracy": float(np.mean(predictions == labels))}
    if set(np.unique(labels)) | set(np.unique(predictions)) <= {0, 1}:
        tp = float(np.sum((predictions == 1) & (labels == 1)))
        fp = float(np.sum((predictions == 1) & (labels == 0)))
        fn = float(np.sum((predictions == 0) & (labels == 1)))
        tn = float(np.sum((predictions == 0) & (labels == 0)))
        metrics["f1"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
        denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        metrics["mcc"] = (tp * tn - fp * fn) / denominator if denominator else 0.0
    return metrics


def finetune_task(model_path: str, tokenizer, task: str, data_dir: Path, out_dir: Path, learning_rate: float = 3e-5,
                  epochs: int | None = None, batch_size: int | None = None, seed: int = 42, max_length: int = 512,
                  revision: str | None = None, trust_remote_code: bool | None = None) -> dict:
    """Fine-tune a fresh classifier from `model_path` on `task`; return the validation metrics and predictions.
    `out_dir` holds the Trainer's epoch checkpoints (the best one predicts)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer, TrainingArguments

    _, _, _, labels, metric = GLUE_TASKS[task]
    folder = data_dir / "full_eval" / "glue_filtered" if (data_dir / "full_eval").is_dir() else data_dir
    splits = {}
    for split in ("train", "valid"):
        path = folder / f"{task}.{split}.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"No {task} {split} data at {path} (the pipeline's glue_filtered/).")
        pairs, targets = read_glue(path, task)
        encoded = tokenizer([a for a, _ in pairs], [b for _, b in pairs], truncation=True, max_length=max_length)
        splits[split] = Dataset.from_dict({**encoded, "labels": targets})

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=labels, revision=revision,
                                                               trust_remote_code=trust_remote_code)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    args = TrainingArguments(
        output_dir=str(out_dir), learning_rate=learning_rate, num_train_epochs=epochs or (30 if task == "wsc" else 10),
        per_device_train_batch_size=batch_size or (16 if task in BIG_BATCH_TASKS else 32),
        per_device_eval_batch_size=64, eval_strategy="epoch", save_strategy="epoch", save_total_limit=1,
        load_best_model_at_end=True, metric_for_best_model=metric, greater_is_better=True, warmup_steps=0.06,
        lr_scheduler_type="cosine", weight_decay=0.01, seed=seed, report_to=[], logging_strategy="epoch",
        disable_tqdm=False, dataloader_pin_memory=torch.cuda.is_available(),
    )
    trainer = Trainer(model=model, args=args, train_dataset=splits["train"], eval_dataset=splits["valid"],
                      data_collator=DataCollatorWithPadding(tokenizer),
                      compute_metrics=lambda p: classification_metrics(p.predictions.argmax(-1), p.label_ids))
    trainer.train()
    output = trainer.predict(splits["valid"])
    predictions = output.predictions.argmax(-1)
    return {"metrics": classification_metrics(predictions, np.asarray(splits["valid"]["labels"])),
            "predictions": [int(p) for p in predictions]}


def write_finetune_results(result: dict, task: str, folder: Path) -> None:
    """The pipeline's predictions.json ({task: {"predictions": [{"id": "<task>_<i>", "pred": label}]}}) and
    results.txt ("metric: value" lines)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"{task}_{i}", "pred": p} for i, p in enumerate(result["predictions"])]
    write_json(folder / "predictions.json", {task: {"predictions": rows}}, indent=None)
    write_atomically(folder / "results.txt", "\n".join(f"{k}: {v}" for k, v in result["metrics"].items()))
