"""The BabyLM zero-shot suite: score every task's candidates, pick the best, and write what the 2025 pipeline writes
(`<task>/predictions.json`, per-UID and per-metadata accuracies) plus one `results.json` and `results.md`."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gatedgpt2.data import ImageEmbeddings, WorldFiles
from modeling_gatedgpt import ImageKind

from .scoring import score_candidates
from .tasks import EWOK_PASSWORD, MULTIMODAL_TASKS, TASKS, TaskData, read_task


ACCURACY_METRIC = Path(__file__).with_name("babylm_accuracy.py")


def load_accuracy_metric():
    import evaluate  # slow to import; only the zero-shot suite needs it

    return evaluate.load(str(ACCURACY_METRIC))


def parse_tasks(tasks: str | Sequence[str]) -> list[str]:
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        raise ValueError(f"--tasks: unknown task(s) {unknown}; choose from {', '.join(TASKS)}.")
    return names


def evaluate_task(model, tokenizer, task: TaskData, images: ImageEmbeddings | None = None, batch_size: int = 64,
                  metric=None, progress: bool = True) -> dict:
    """Accuracy (mean over UIDs), per-UID and per-metadata accuracies and the pipeline's predictions for one task.
    `images`: score each candidate with its record's image embedding; None scores the text alone."""
    items = task.items
    sentences = [s for item in items for s in item.sentences]
    completions = [c for item in items for c in item.completions]
    sources = [item.source for item in items for _ in item.sentences]
    image_table = image_rows = None
    if images is not None:
        image_table = images.embeddings
        image_rows = images.indices([item.image_id for item in items for _ in item.sentences], sources)
    scores = score_candidates(model, tokenizer, sentences, completions, image_table, image_rows, sources, batch_size,
                              desc=task.name if progress else None)
    bounds = np.cumsum([0] + [len(item.sentences) for item in items])
    per_item = [scores[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    chosen = [int(np.argmax(candidates)) for candidates in per_item]  # first maximum, as torch.max
    # Items whose best score is shared: the pipeline gives them to the first candidate, which is the correct one, so
    # they count as right; how many there are says how much of the accuracy is that rule's (all of it, for a model
    # that scores nothing).
    ties = sum(int(np.sum(candidates == candidates.max()) > 1) for candidates in per_item)

    metric = metric or load_accuracy_metric()
    computed = metric.compute(predictions=chosen, references=[item.label for item in items],
                              groups=[item.uid for item in items])
    breakdown = {"UID": computed["per_group"]}
    for key in dict.fromkeys(k for item in items for k in item.metadata):
        hits = defaultdict(list)
        for item, choice in zip(items, chosen):
            hits[item.metadata[key]].append(choice == item.label)
        breakdown[key] = {value: 100.0 * float(np.mean(h)) for value, h in hits.items()}

    predictions = defaultdict(list)
    for item, choice in zip(items, chosen):
        predictions[item.uid].append({"id": f"{item.uid}_{len(predictions[item.uid])}",
                                      "pred": item.completions[choice]})
    return {
        "dataset": task.dataset,
        "accuracy": computed["accuracy"],
        "micro_accuracy": computed["micro_accuracy"],
        "items": len(items),
        "exact_ties": ties,
        "accuracies": breakdown,
        "predictions": {uid: {"predictions": p} for uid, p in predictions.items()},
        "correct": [int(choice == item.label) for item, choice in zip(items, chosen)],  # in item order
    }


def zero_shot(model, tokenizer, data_dir: str | Path, tasks: str | Sequence[str] = TASKS, fast: bool = False,
              images: str | Path | ImageEmbeddings | None = None, no_image: bool = False, batch_size: int = 64,
              out_dir: str | Path | None = None, ewok_password: str = EWOK_PASSWORD, progress: bool = True,
              model_name: str | None = None) -> dict:
    """Run the zero-shot tasks on a model and its tokenizer; return (and with `out_dir`, write) the results.

    images: embeddings for Winoground / VQA (see `gatedgpt2.data.images`); with a grounded-world eval folder the
        default is its `images/embeddings.npy`. no_image: score those tasks without images (BabyLM's "no vision" rows)."""
    tasks = parse_tasks(tasks)
    data_dir = Path(data_dir)
    model.eval()
    world_images = WorldFiles.task_images(data_dir, ImageKind.GLOBAL)
    if images is None and not no_image and world_images.is_file():
        images = world_images
    if isinstance(images, (str, Path)):
        images = ImageEmbeddings.load(images)
    needs_images = [t for t in tasks if t in MULTIMODAL_TASKS]
    if needs_images and images is None and not no_image:
        raise ValueError(f"Tasks {needs_images} need image embeddings: pass `images` (--images) or score them "
                         f"without images with `no_image=True` (--no-image).")

    metric = load_accuracy_metric()
    results = {"model": model_name, "data": str(data_dir), "fast": fast, "vision": not no_image, "tasks": {}}
    for name in tasks:
        task = read_task(data_dir, name, fast, ewok_password)
        task_images = images if name in MULTIMODAL_TASKS and not no_image else None
        results["tasks"][name] = evaluate_task(model, tokenizer, task, task_images, batch_size, metric, progress)
    if out_dir is not None:
        write_results(results, out_dir)
    return results


def results_table(results: dict) -> str:
    vision = "" if results["vision"] else " (no vision)"
    lines = ["| task | data | items | accuracy | exact ties (counted right, as the pipeline does) |",
             "| --- | --- | ---: | ---: | ---: |"]
    lines += [f"| {name}{vision if name in MULTIMODAL_TASKS else ''} | {r['dataset']} | {r['items']} | "
              f"{r['accuracy']:.2f} | {r['exact_ties']} |" for name, r in results["tasks"].items()]
    return "\n".join(lines) + "\n"


def write_results(results: dict, out_dir: str | Path) -> None:
    """`<task>/predictions.json` (the pipeline's format), `<task>/accuracies.json` and `<task>/correct.json` (1 or 0
    per item, in the task's order: two models' items pair up) per task; `results.json` (without the predictions)
    and `results.md` for all."""
    out_dir = Path(out_dir)
    summary = {**results, "tasks": {}}
    for name, task in results["tasks"].items():
        folder = out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "predictions.json").write_text(json.dumps(task["predictions"]))
        (folder / "accuracies.json").write_text(json.dumps(task["accuracies"], indent=2))
        (folder / "correct.json").write_text(json.dumps(task["correct"]))
        summary["tasks"][name] = {k: v for k, v in task.items() if k not in ("predictions", "correct")}
    (out_dir / "results.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "results.md").write_text(results_table(results))
