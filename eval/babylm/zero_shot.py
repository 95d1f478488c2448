"""The BabyLM zero-shot suite: score every task's candidates, pick the best, and write what the 2025 pipeline writes
(`<task>/predictions.json`, per-UID and per-metadata accuracies) plus one `results.json` and `results.md`."""

from __future__ import annotations

import fcntl
import functools
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.special import softmax
from scipy.stats import spearmanr

from gatedgpt2.data import ImageEmbeddings, WorldFiles
from gatedgpt2.data.run_files import write_atomically, write_json
from modeling_gatedgpt import ImageKind

from .reading import evaluate_reading, write_reading
from .scoring import score_candidates
from .tasks import EWOK_PASSWORD, SUITES, TASKS, Item, Task, TaskData, get_task, read_task, task_folder

ACCURACY_METRIC = Path(__file__).with_name("babylm_accuracy.py")


@functools.cache
def load_accuracy_metric():
    """The local `evaluate` module, loaded once per process (loading it costs as much as scoring a small task)."""
    import evaluate  # slow to import; only the zero-shot suite needs it

    return evaluate.load(str(ACCURACY_METRIC))


def parse_tasks(tasks: str | Sequence[str]) -> list[str]:
    """A comma list (or a list) of task names; "fast" and "full" stand for the pipeline's suites."""
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    names = list(dict.fromkeys(n for name in names for n in SUITES.get(name, (name,))))
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        raise ValueError(f"--tasks: unknown task(s) {unknown}; choose from {', '.join(TASKS)}, or fast / full "
                         f"(the pipeline's suites: {', '.join(SUITES['fast'])} / {', '.join(SUITES['full'])}).")
    return names


def metadata_accuracies(items: Sequence[Item], chosen: list[int]) -> dict:
    """{metadata field: {value: accuracy in %}}, as the pipeline breaks a task down."""
    breakdown = {}
    for key in dict.fromkeys(k for item in items for k in item.metadata):
        hits = defaultdict(list)
        for item, choice in zip(items, chosen):
            hits[item.metadata[key]].append(choice == item.label)
        breakdown[key] = {value: 100.0 * float(np.mean(h)) for value, h in hits.items()}
    return breakdown


class ChoiceScoring:
    """Each item picks its best candidate; the task's number is the pipeline's accuracy: the mean over UIDs of their
    accuracies (with `Task.uid_splits`, the mean over the splits of the mean of each split's UIDs)."""

    unit = "accuracy, %"
    report_metric = "ACCURACY"
    dataset_level = True  # the pipeline writes <task>/<dataset>/...

    def evaluate(self, model, tokenizer, task: Task, data_dir: Path, fast: bool, images, batch_size: int, metric,
                 progress: bool, password: str) -> dict:
        data = read_task(data_dir, task.name, fast, password)
        return evaluate_task(model, tokenizer, data, images if task.multimodal else None, batch_size, metric, progress)

    def summarise(self, task: Task, items: Sequence[Item], chosen: list[int], probabilities: list[np.ndarray],
                  metric) -> dict:
        metric = metric or load_accuracy_metric()
        computed = metric.compute(predictions=chosen, references=[item.label for item in items],
                                  groups=[item.uid for item in items])
        score, name = computed["accuracy"], "accuracy"
        if task.uid_splits:
            splits = [[value for uid, value in computed["per_group"].items() if uid.startswith(split)]
                      for split in task.uid_splits]
            score, name = float(np.mean([np.mean(s) for s in splits if s])), "accuracy (mean over splits)"
        return {"metric": name, "score": score, "accuracy": score, "micro_accuracy": computed["micro_accuracy"],
                "accuracies": {"UID": computed["per_group"], **metadata_accuracies(items, chosen)}}

    def prediction_extras(self, probability: np.ndarray) -> dict:
        return {}

    def scores(self, result: dict) -> dict:
        """What scores.json keeps of a result."""
        return {key: result[key] for key in ("score", "metric", "exact_ties", "items")}

    def headline(self, scores: dict) -> float:
        return scores["score"]

    def format(self, scores: dict) -> str:
        return f"{scores['score']:.2f}"

    def write(self, result: dict, folder: Path) -> None:
        """Ours: predictions.json (the pipeline's format), accuracies.json, correct.json (1 or 0 per item, in order)."""
        write_json(folder / "predictions.json", result["predictions"], indent=None)
        write_json(folder / "accuracies.json", result["accuracies"])
        write_json(folder / "correct.json", result["correct"], indent=None)

    def write_pipeline(self, result: dict, folder: Path) -> None:
        """The pipeline's: predictions.json and best_temperature_report.txt (its breakdowns, score at temperature 1)."""
        write_json(folder / "predictions.json", result["predictions"], indent=None)
        lines = ["TEMPERATURE: 1.00", ""]
        for domain, values in self.report_breakdowns(result).items():
            lines += [f"### {domain.upper()} {self.report_metric}",
                      *(f"{key}: {value:.2f}" for key, value in values.items()), ""]
        report = "\n".join([*lines, f"### AVERAGE {self.report_metric}", f"{result['score']:.2f}", "", ""])
        write_atomically(folder / "best_temperature_report.txt", report)

    def report_breakdowns(self, result: dict) -> dict:
        return result["accuracies"]


class CorrelationScoring(ChoiceScoring):
    """The WUG tasks: Spearman's rho between the probability of the first form and the human ratio (an accuracy over
    which form is likelier would mean nothing); each prediction carries that probability, from which the
    leaderboard computes rho."""

    unit = "rho"
    report_metric = "SPEARMAN'S RHO"

    def summarise(self, task, items, chosen, probabilities, metric) -> dict:
        rho = spearmanr([p[0] for p in probabilities], [item.ratio for item in items])[0]
        return {"metric": "spearman", "score": float(rho), "accuracies": metadata_accuracies(items, chosen)}

    def prediction_extras(self, probability: np.ndarray) -> dict:
        return {"prob": float(probability[0])}

    def format(self, scores: dict) -> str:
        return f"{scores['score']:.3f}"

    def report_breakdowns(self, result: dict) -> dict:
        return {"UID": {"avg": result["score"]}}


class ReadingScoring:
    """Reading (`eval/babylm/reading.py`): the R^2 gains of surprisal on eye tracking and self-paced reading."""

    unit = "eye-tracking R² gain, %"
    dataset_level = False  # the pipeline writes reading/...

    def evaluate(self, model, tokenizer, task: Task, data_dir: Path, fast: bool, images, batch_size: int, metric,
                 progress: bool, password: str) -> dict:
        csv = task_folder(data_dir, task.name, fast) / "reading_data.csv"
        return evaluate_reading(model, tokenizer, csv, batch_size, progress)

    def scores(self, result: dict) -> dict:
        return {key: result[key] for key in ("eye_tracking", "self_paced_reading")}

    def headline(self, scores: dict) -> float:
        return scores["eye_tracking"]

    def format(self, scores: dict) -> str:
        return f"{scores['eye_tracking']:.2f} / {scores['self_paced_reading']:.2f}"

    def write(self, result: dict, folder: Path) -> None:
        write_reading(result, folder)

    write_pipeline = write


SCORINGS = {"choice": ChoiceScoring(), "correlation": CorrelationScoring(), "reading": ReadingScoring()}


def scoring_of(task: str) -> ChoiceScoring | ReadingScoring:
    return SCORINGS[get_task(task).scoring]


def evaluate_task(model, tokenizer, task: TaskData, images: ImageEmbeddings | None = None, batch_size: int = 64,
                  metric=None, progress: bool = True) -> dict:
    """The task's score (its `Task.scoring`'s), per-UID and per-metadata accuracies and the pipeline's predictions.
    `images`: score each candidate with its record's image embedding; None scores the text alone."""
    definition, scoring = get_task(task.name), scoring_of(task.name)
    items = task.items
    sentences = [s for item in items for s in item.sentences]
    completions = [c for item in items for c in item.completions]
    sources = [item.source for item in items for _ in item.sentences]
    image_table = image_indices = None
    if images is not None:
        image_table = images.embeddings
        image_indices = images.indices([item.image_id for item in items for _ in item.sentences], sources)
    # each candidate's log p after what all of its item's candidates share: choices, ties and probabilities are the
    # pipeline's, whose full sums differ from these by the same amount within an item
    scores = score_candidates(model, tokenizer, sentences, completions, image_table, image_indices, sources, batch_size,
                              desc=task.name if progress else None,
                              items=[n for n, item in enumerate(items) for _ in item.sentences])
    bounds = np.cumsum([0] + [len(item.sentences) for item in items])
    per_item = [scores[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    chosen = [int(np.argmax(candidates)) for candidates in per_item]  # first maximum, as torch.max
    # Items whose best score is shared: the pipeline gives them to the first candidate, which is the correct one, so
    # they count as right; how many there are says how much of the accuracy is that rule's (all of it, for a model
    # that scores nothing).
    ties = sum(int(np.sum(candidates == candidates.max()) > 1) for candidates in per_item)
    probabilities = [softmax(candidates) for candidates in per_item]
    summary = scoring.summarise(definition, items, chosen, probabilities, metric)

    predictions = defaultdict(list)
    for item, choice, probability in zip(items, chosen, probabilities):
        # what the pipeline writes as the prediction: the chosen completion (COMPS: the chosen sentence)
        prediction = {"id": f"{item.uid}_{len(predictions[item.uid])}",
                      "pred": (item.sentences if definition.predicts_sentence else item.completions)[choice],
                      **scoring.prediction_extras(probability)}
        predictions[item.uid].append(prediction)
    return {
        "dataset": task.dataset,
        "metric": summary["metric"],
        "score": summary["score"],
        **{key: summary[key] for key in ("accuracy", "micro_accuracy") if key in summary},
        "items": len(items),
        "exact_ties": ties,
        "accuracies": summary["accuracies"],
        "predictions": {uid: {"predictions": p} for uid, p in predictions.items()},
        "correct": [int(choice == item.label) for item, choice in zip(items, chosen)],  # in item order
    }


def zero_shot(model, tokenizer, data_dir: str | Path, tasks: str | Sequence[str] = ("blimp", "supplement", "ewok"),
              fast: bool = False, images: str | Path | ImageEmbeddings | None = None, no_image: bool = False,
              batch_size: int = 64, out_dir: str | Path | None = None, ewok_password: str = EWOK_PASSWORD,
              progress: bool = True, model_name: str | None = None) -> dict:
    """Run the zero-shot tasks on a model and its tokenizer; return (and with `out_dir`, write) the results.

    images: embeddings for Winoground / VQA (see `gatedgpt2.data.images`); with a grounded-world eval folder the default
    is its `images/global.npy`. no_image: score those tasks without images (BabyLM's "no vision" rows)."""
    tasks = parse_tasks(tasks)
    data_dir = Path(data_dir)
    model.eval()
    world_images = WorldFiles.task_images(data_dir, ImageKind.GLOBAL)
    if images is None and not no_image and world_images.is_file():
        images = world_images
    if isinstance(images, (str, Path)):
        images = ImageEmbeddings.load(images)
    needs_images = [t for t in tasks if get_task(t).multimodal]
    if needs_images and images is None and not no_image:
        raise ValueError(f"Tasks {needs_images} need image embeddings: pass `images` (--images) or score them "
                         f"without images with `no_image=True` (--no-image).")

    metric = load_accuracy_metric()
    results = {"model": model_name, "data": str(data_dir), "fast": fast, "vision": not no_image, "tasks": {}}
    for name in tasks:
        results["tasks"][name] = scoring_of(name).evaluate(model, tokenizer, get_task(name), data_dir, fast,
                                                           None if no_image else images, batch_size, metric,
                                                           progress, ewok_password)
    if out_dir is not None:
        write_results(results, out_dir)
    return results


def results_table(results: dict) -> str:
    vision = "" if results["vision"] else " (no vision)"
    lines = ["| task | data | items | score | metric | exact ties (counted right, as the pipeline does) |",
             "| --- | --- | ---: | ---: | --- | ---: |"]
    for name, r in results["tasks"].items():
        lines.append(f"| {name}{vision if get_task(name).multimodal else ''} | {r['dataset']} | {r['items']} | "
                     f"{scoring_of(name).format(r)} | {r['metric']} | {r.get('exact_ties', '-')} |")
    return "\n".join(lines) + "\n"


def write_results(results: dict, out_dir: str | Path) -> None:
    """`<task>/predictions.json` (the pipeline's format), `<task>/accuracies.json` and `<task>/correct.json` (1 or 0
    per item, in the task's order: two models' items pair up) per task; `results.json` (without the predictions)
    and `results.md` for all."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".lock", "a+") as lock:  # two evals into one folder write one after the other
        fcntl.flock(lock, fcntl.LOCK_EX)
        summary = {**results, "tasks": earlier_tasks(results, out_dir / "results.json")}
        for name, task in results["tasks"].items():
            folder = out_dir / name
            summary["tasks"][name] = {k: v for k, v in task.items() if k not in ("predictions", "correct")}
            scoring_of(name).write(task, folder)
        write_json(out_dir / "results.json", summary)
        write_atomically(out_dir / "results.md", results_table(summary))


SAME_EVALUATION = ("model", "data", "fast", "vision")


def earlier_tasks(results: dict, path: Path) -> dict:
    """The tasks an earlier eval of the same model, data and settings wrote into `path` (results.json), which the
    new ones join (a task scored again replaces its earlier result); another evaluation's results are not mixed in."""
    if not path.is_file():
        return {}
    earlier = json.loads(path.read_text())
    changed = [f"{k} {earlier.get(k)!r} there, {results.get(k)!r} now" for k in SAME_EVALUATION
               if earlier.get(k) != results.get(k)]
    if changed:
        raise ValueError(f"{path} holds the results of another evaluation ({'; '.join(changed)}); write these into "
                         f"another --out, or delete it")
    return dict(earlier.get("tasks", {}))


def pipeline_folder(results_dir: str | Path, model: str, revision: str | None, task: str, dataset: str) -> Path:
    """Where the pipeline puts a task's predictions: `<results>/<model>/<revision>/zero_shot/causal/<task>/<dataset>`
    (reading has no dataset level). `model` is named by its path's stem, as the pipeline and its collate_preds.py
    name it."""
    folder = Path(results_dir) / Path(model).stem / (revision or "main") / "zero_shot" / "causal"
    folder = folder / get_task(task).pipeline_name
    return folder / dataset if scoring_of(task).dataset_level else folder


def write_pipeline_tree(results: dict, results_dir: str | Path, model: str, revision: str | None = None) -> list[Path]:
    """Every task's predictions (and report) where the pipeline's eval scripts write them, so that its
    collate_preds.sh builds the leaderboard file from them; returns the folders written."""
    folders = []
    for name, task in results["tasks"].items():
        folder = pipeline_folder(results_dir, model, revision, name, task["dataset"])
        scoring_of(name).write_pipeline(task, folder)
        folders.append(folder)
    return folders
