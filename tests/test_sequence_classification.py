"""GatedGPT2ForSequenceClassification (AutoModelForSequenceClassification): the last real token's state through a
linear head, the same whichever side the batch is padded on, trained by the HF Trainer; and the base model counts
positions over real tokens, so that left padding (the BabyLM pipeline's `--padding_side left`) changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments

from modeling_gatedgpt import GatedGPT2ForSequenceClassification
from tests.helpers.models import IMAGE_DIM, VOCAB, tiny_config, tiny_model

PAD = 0


def padded(rows: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), PAD)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span], mask[i, span] = torch.tensor(row), 1
    return ids, mask


ROWS = [[5, 9, 14, 3, 7, 21], [11, 4], [8, 30, 2, 19]]


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_changes_no_real_tokens_logits(side):
    """Each row alone, and in a batch padded on either side: the same logits at its real tokens, with an image too."""
    model = tiny_model(pad_token_id=PAD)
    images = torch.randn(len(ROWS), 3, IMAGE_DIM, generator=torch.Generator().manual_seed(0))
    ids, mask = padded(ROWS, side)
    with torch.no_grad():
        batch = model(ids, attention_mask=mask, image_embeds=images).logits
        for i, row in enumerate(ROWS):
            alone = model(torch.tensor([row]), image_embeds=images[i : i + 1]).logits[0]
            assert (batch[i][mask[i].bool()] - alone).abs().max() <= 1e-5


def test_classifier_reads_the_last_real_token_on_either_side():
    model = GatedGPT2ForSequenceClassification(tiny_config(num_labels=3, pad_token_id=PAD)).eval()
    with torch.no_grad():
        alone = torch.stack([model(torch.tensor([row])).logits[0] for row in ROWS])
        for side in ("left", "right"):
            ids, mask = padded(ROWS, side)
            assert (model(ids, attention_mask=mask).logits - alone).abs().max() <= 1e-5
        # without a mask, right padding is invisible to causal attention, and the pad token id finds each end
        ids, _ = padded(ROWS, "right")
        assert (model(ids).logits - alone).abs().max() <= 1e-5


def test_classifier_refuses_a_batch_it_cannot_pool_and_supports_regression():
    model = GatedGPT2ForSequenceClassification(tiny_config(num_labels=1, pad_token_id=None)).eval()
    ids, _ = padded(ROWS, "right")
    with pytest.raises(ValueError, match="attention_mask.*pad_token_id"):
        model(ids)
    out = model(ids[:1], labels=torch.tensor([0.5]))
    assert out.logits.shape == (1, 1) and torch.isclose(out.loss, (out.logits[0, 0] - 0.5) ** 2)


def test_auto_class_loads_a_language_model_checkpoint_with_a_new_head(tmp_path):
    """A pretrained GatedGPT2 becomes a classifier through AutoModelForSequenceClassification: its transformer
    weights kept, the head new."""
    lm = tiny_model(pad_token_id=PAD)
    lm.save_pretrained(tmp_path)
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=2)
    assert isinstance(classifier, GatedGPT2ForSequenceClassification)
    assert torch.equal(classifier.transformer.h[0].attn.c_attn.weight, lm.transformer.h[0].attn.c_attn.weight)
    assert classifier.score.weight.shape == (2, lm.config.n_embd)


def test_the_trainer_fine_tunes_it(tmp_path):
    """A rule the untrained model cannot know (does token 5 occur?), learnt with the HF Trainer and its padding
    collator, and held-out sequences then classified far above chance."""
    generator = np.random.default_rng(0)

    def examples(count: int) -> Dataset:
        rows = [[int(t) for t in generator.integers(6, VOCAB, generator.integers(3, 9))] for _ in range(count)]
        labels = [int(i % 2) for i in range(count)]
        for row, label in zip(rows, labels):
            if label:
                row[int(generator.integers(len(row)))] = 5
        return Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows],
                                  "labels": labels})

    train, held_out = examples(256), examples(64)
    torch.manual_seed(0)
    model = GatedGPT2ForSequenceClassification(tiny_config(num_labels=2, pad_token_id=PAD))

    def collate(features):
        ids, mask = padded([f["input_ids"] for f in features], "left")
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([f["labels"] for f in features])}

    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=32, num_train_epochs=12,
                             learning_rate=3e-3, report_to=[], save_strategy="no", logging_strategy="no",
                             use_cpu=True, seed=0)
    Trainer(model=model, args=args, train_dataset=train, data_collator=collate).train()
    model.eval()
    with torch.no_grad():
        batch = collate(list(held_out))
        accuracy = (model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits.argmax(-1)
                    == batch["labels"]).float().mean().item()
    assert accuracy >= 0.9


@pytest.mark.parametrize("line, message", [
    ('{"sentence1": "a", "label": 0}', r"rte.jsonl:1: missing field\(s\) \['sentence2'\]"),
    ('{"sentence1": "a", "sentence2": "b", "label": 2}', r"label must be an integer in \[0, 2\)"),
    ('{"sentence1": "a", "sentence2": 7, "label": 1}', r"\['sentence2'\] must be text"),
    ('{"sentence1": "a", "sentence2": "b", "label": true}', "label must be an integer"),
])
def test_glue_files_are_read_as_the_pipeline_reads_them_and_bad_records_named(tmp_path, line, message):
    from gatedgpt2.eval.babylm.finetune import read_glue

    good = tmp_path / "wsc.jsonl"
    good.write_text('{"span1_text": "the cup", "span2_text": "it", "text": "It fell.", "label": 1}\n')
    assert read_glue(good, "wsc") == ([('Does "it" refer to "the cup" in this passage?', "It fell.")], [1])
    bad = tmp_path / "rte.jsonl"
    bad.write_text(line + "\n")
    with pytest.raises(ValueError, match=message):
        read_glue(bad, "rte")


def test_classification_metrics_are_accuracy_f1_and_matthews():
    from gatedgpt2.eval.babylm.finetune import classification_metrics

    metrics = classification_metrics(np.array([1, 1, 0, 0, 1]), np.array([1, 0, 0, 1, 1]))
    tp, fp, fn, tn = 2, 1, 1, 1
    assert metrics["accuracy"] == pytest.approx(0.6) and metrics["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert metrics["mcc"] == pytest.approx((tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    assert set(classification_metrics(np.array([0, 2]), np.array([0, 1]))) == {"accuracy"}  # three classes
