"""The grounded world's held-out sets (minimal pairs, Winoground-style swaps, VQA-style questions) through the zero-shot
suite, Winoground and VQA both with and without the image, flattened for the training report."""

from __future__ import annotations

from gatedgpt2.data import ImageEmbeddings, WorldFiles
from modeling_gatedgpt import ImageKind

from .babylm.zero_shot import zero_shot


def evaluate_world(model, tokenizer, world: WorldFiles, image_kind: ImageKind | str = ImageKind.GLOBAL,
                   batch_size: int = 64, progress: bool = True) -> dict:
    """Accuracies in %: minimal pairs per UID and their mean; Winoground overall and per swap kind; VQA; each
    multimodal score also `_no_image`. `image_kind`: the image kind the model was trained on."""
    images = ImageEmbeddings.load(world.eval_images(image_kind))
    run = dict(batch_size=batch_size, progress=progress)
    with_image = zero_shot(model, tokenizer, world.eval_dir, ("blimp", "winoground", "vqa"), images=images,
                           **run)["tasks"]
    without = zero_shot(model, tokenizer, world.eval_dir, ("winoground", "vqa"), no_image=True, **run)["tasks"]
    results = {"minimal_pairs": with_image["blimp"]["accuracies"]["UID"],
               "minimal_pairs_macro": with_image["blimp"]["accuracy"]}
    for suffix, tasks in (("", with_image), ("_no_image", without)):
        results[f"winoground{suffix}"] = tasks["winoground"]["accuracy"]
        for kind, accuracy in tasks["winoground"]["accuracies"]["Type"].items():
            results[f"winoground_{kind.lower()}{suffix}"] = accuracy
        results[f"vqa{suffix}"] = tasks["vqa"]["accuracy"]
    return results
