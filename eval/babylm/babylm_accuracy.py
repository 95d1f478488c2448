"""BabyLM zero-shot accuracy as an `evaluate` metric module, loadable offline: `evaluate.load(path to this file)`.

Accuracy is taken per group (a BLiMP paradigm, an EWoK domain, ...) and then averaged over the groups, which is how the
BabyLM pipeline reports a task; the pooled accuracy over all items comes with it."""

from collections import defaultdict

import datasets
import evaluate

_DESCRIPTION = """Macro-averaged accuracy over groups (BabyLM zero-shot tasks: accuracy per UID, then their mean)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): index of the candidate the model scored highest.
    references (`list` of `int`): index of the correct candidate (0 in every BabyLM file).
    groups (`list` of `str`): the group (UID) of each item.
Returns:
    accuracy (`float`): mean over groups of the per-group accuracy, in %.
    micro_accuracy (`float`): accuracy over all items, in %.
    per_group (`dict`): accuracy in % of each group, in order of first appearance.
Examples:
    >>> metric = evaluate.load("eval/babylm/babylm_accuracy.py")
    >>> metric.compute(predictions=[0, 1, 0], references=[0, 0, 0], groups=["a", "a", "b"])["accuracy"]
    75.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class BabyLMAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("int32"),
                    "references": datasets.Value("int32"),
                    "groups": datasets.Value("string"),
                }
            ),
        )

    def _compute(self, predictions, references, groups):
        correct = defaultdict(list)
        for prediction, reference, group in zip(predictions, references, groups):
            correct[group].append(prediction == reference)
        per_group = {group: 100.0 * sum(hits) / len(hits) for group, hits in correct.items()}
        return {
            "accuracy": sum(per_group.values()) / len(per_group),
            "micro_accuracy": 100.0 * sum(p == r for p, r in zip(predictions, references)) / len(predictions),
            "per_group": per_group,
        }
