"""The grounded world's held-out sets: minimal pairs, Winoground-style swaps and VQA-style questions, each scored with
and without the image (`image_mask=False`), where an image applies."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from .scoring import completion_scores, sentence_scores


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_eval_images(eval_dir: Path, image_tokens: str) -> tuple[np.ndarray, dict[str, int]]:
    images = np.load(eval_dir / "images" / ("tokens.npy" if image_tokens == "cls_patches" else "embeddings.npy"),
                     mmap_mode="r")
    ids = json.loads((eval_dir / "images" / "image_ids.json").read_text())
    return images, {image_id: i for i, image_id in enumerate(ids)}


def evaluate_world(model, tokenizer, eval_dir: str | Path, image_tokens: str = "global", batch_size: int = 64,
                   progress: bool = True) -> dict:
    """Accuracies in % (minimal pairs macro-averaged over UIDs; Winoground overall and per swap kind; VQA)."""
    eval_dir = Path(eval_dir)
    model.eval()
    results: dict = {}
    desc = (lambda name: name) if progress else (lambda name: None)

    pairs = [r for f in sorted((eval_dir / "blimp").glob("*.jsonl")) for r in _jsonl(f)]
    scores = sentence_scores(model, tokenizer, [p[k] for p in pairs for k in ("sentence_good", "sentence_bad")],
                             batch_size=batch_size, desc=desc("minimal pairs")).reshape(-1, 2)
    by_uid = defaultdict(list)
    for p, (good, bad) in zip(pairs, scores):
        by_uid[p["UID"]].append(good > bad)
    results["minimal_pairs"] = {uid: 100 * float(np.mean(v)) for uid, v in by_uid.items()}
    results["minimal_pairs_macro"] = float(np.mean(list(results["minimal_pairs"].values())))

    images, index = load_eval_images(eval_dir, image_tokens)
    wino = _jsonl(eval_dir / "winoground" / "winoground.jsonl")
    wino_images = images[[index[r["image_id"]] for r in wino for _ in (0, 1)]]
    texts = [r[k] for r in wino for k in ("caption_0", "caption_1")]
    vqa = _jsonl(eval_dir / "vqa" / "vqa.jsonl")
    candidates = [[r["target_ans"], *r["distractors"]] for r in vqa]
    vqa_images = images[[index[r["image_id"]] for r, c in zip(vqa, candidates) for _ in c]]
    for use_image, suffix in ((True, ""), (False, "_no_image")):
        s = sentence_scores(model, tokenizer, texts, wino_images, use_image, batch_size,
                            desc(f"winoground{suffix}")).reshape(-1, 2)
        correct = s[:, 0] > s[:, 1]
        results[f"winoground{suffix}"] = 100 * float(correct.mean())
        for kind in sorted({r["collapsed_tag"] for r in wino}):
            rows = np.array([r["collapsed_tag"] == kind for r in wino])
            results[f"winoground_{kind.lower()}{suffix}"] = 100 * float(correct[rows].mean())
        s = completion_scores(model, tokenizer, [r["question"] for r, c in zip(vqa, candidates) for _ in c],
                              [" " + a for c in candidates for a in c], vqa_images, use_image, batch_size,
                              desc(f"vqa{suffix}"))
        s = s.reshape(len(vqa), -1)
        results[f"vqa{suffix}"] = 100 * float((s.argmax(1) == 0).mean())
    return results
