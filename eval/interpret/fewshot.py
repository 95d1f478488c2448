"""Few-shot probe of top-k cross-modal feature gating ("Attention Improves Multimodality", sections 5.4-5.6).

For each seed, N images per class are drawn as the support set and the rest is the query set. A
`TopKCrossModalFusion` is trained on the support images paired with their class-name text features (Adam, lr 1e-3,
StepLR step 5 / gamma 0.5, 20 epochs, L2-normalised features); then linear probes are fitted on the raw support
features, on the enhanced ones and on both concatenated, and scored on the query set. Reported: mean and std over
seeds.

Text features are class-name prompts encoded by a text encoder: by default a GatedGPT2 checkpoint's text stream (the
mean of its final hidden states over the prompt's tokens, with no image). Any (features, labels, class names) arrays
work, e.g. CLIP features of Oxford Pets or Food-101 with their CLIP text features.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gatedgpt2.data.run_files import save_figure, write_json
from gatedgpt2.data.scenes import COLOURS, SHAPES, SceneEncoder, encode_scenes, random_scene

from .topk_fusion import TopKCrossModalFusion, topk_fusion_loss


@torch.no_grad()
def class_text_features(model, tokenizer, class_names: Sequence[str], template: str = "{}") -> np.ndarray:
    """(C, hidden) mean final hidden state of each prompt, text only."""
    base = getattr(model, "transformer", model)
    encoded = tokenizer([template.format(name) for name in class_names], padding=True, return_tensors="pt")
    hidden = base(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).last_hidden_state
    mask = encoded["attention_mask"][..., None].float()
    return ((hidden * mask).sum(1) / mask.sum(1)).numpy()


def world_dataset(per_class: int = 40, embed_dim: int = 128, seed: int = 0):
    """Single-object grounded-world scenes encoded to their global embedding; classes = colour x shape."""
    import random

    classes = [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]
    rng, scenes, labels = random.Random(seed), [], []
    counts = dict.fromkeys(classes, 0)
    while min(counts.values()) < per_class:
        scene = random_scene(rng, 1)
        name = f"{scene[0].colour} {scene[0].shape}"
        if counts[name] < per_class:
            counts[name] += 1
            scenes.append(scene)
            labels.append(classes.index(name))
    features, _ = encode_scenes(scenes, SceneEncoder(embed_dim=embed_dim, seed=0), seed=seed)
    return features, np.array(labels), classes


def split(labels: np.ndarray, shots: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Support (`shots` per class) and query indices."""
    rng = np.random.default_rng(seed)
    support = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) <= shots:
            raise ValueError(f"class {label} has {len(members)} examples; {shots}-shot needs more than {shots}.")
        support.extend(rng.choice(members, shots, replace=False))
    support = np.sort(np.array(support))
    return support, np.setdiff1d(np.arange(len(labels)), support)


def train_fusion(images: torch.Tensor, labels: torch.Tensor, texts: torch.Tensor, k: int, epochs: int = 20,
                 lr: float = 1e-3, batch_size: int = 32, seed: int = 0) -> TopKCrossModalFusion:
    """The paper's recipe on (image, class text) pairs: Adam, StepLR(5, 0.5), `epochs` epochs."""
    torch.manual_seed(seed)
    fusion = TopKCrossModalFusion(images.shape[1], texts.shape[1], images.shape[1], k)
    optimizer = torch.optim.Adam(fusion.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.5)
    for _ in range(epochs):
        for batch in torch.randperm(len(images)).split(batch_size):
            enhanced = fusion(images[batch], texts)
            loss = topk_fusion_loss(enhanced, images[batch], fusion.project_text(texts)[labels[batch]])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        schedule.step()
    return fusion.eval()


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 classes: int, weight_decay: float = 1e-3, steps: int = 100) -> float:
    """Multinomial logistic regression (L-BFGS, L2) on standardised features; query accuracy in %."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    probe = torch.nn.Linear(train_x.shape[1], classes)
    optimizer = torch.optim.LBFGS(probe.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(probe(train_x), train_y) + weight_decay * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return 100 * float((probe(test_x).argmax(-1) == test_y).float().mean())


def fewshot(features: np.ndarray, labels: np.ndarray, text_features: np.ndarray, shots: Sequence[int] = (4, 16),
            seeds: int = 5, k: int = 3, epochs: int = 20) -> dict:
    """{shots: {"raw" | "enhanced" | "raw + enhanced": {mean, std, runs}}} over `seeds` splits."""
    if len(features) != len(labels):
        raise ValueError(f"{len(features)} feature rows but {len(labels)} labels.")
    classes = int(labels.max()) + 1
    if len(text_features) != classes:
        raise ValueError(f"{len(text_features)} class text features for {classes} classes.")
    images = F.normalize(torch.as_tensor(features, dtype=torch.float32), dim=-1)
    texts = F.normalize(torch.as_tensor(text_features, dtype=torch.float32), dim=-1)
    targets = torch.as_tensor(labels, dtype=torch.long)
    results = {}
    for n in shots:
        runs = {"raw": [], "enhanced": [], "raw + enhanced": []}
        for seed in range(seeds):
            support, query = split(labels, n, seed)
            fusion = train_fusion(images[support], targets[support], texts, k, epochs, seed=seed)
            with torch.no_grad():
                enhanced = fusion(images, texts)
            both = torch.cat([images, enhanced], 1)
            for name, x in (("raw", images), ("enhanced", enhanced), ("raw + enhanced", both)):
                runs[name].append(linear_probe(x[support], targets[support], x[query], targets[query], classes))
        results[n] = {name: {"mean": float(np.mean(r)), "std": float(np.std(r)), "runs": r} for name, r in runs.items()}
    return results


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shots = list(results)
    x = np.arange(len(shots))
    fig, ax = plt.subplots(figsize=(3.5, 3))
    for offset, name in ((-0.25, "raw"), (0, "enhanced"), (0.25, "raw + enhanced")):
        ax.bar(x + offset, [results[n][name]["mean"] for n in shots], 0.25,
               yerr=[results[n][name]["std"] for n in shots], capsize=3, label=name)
    ax.set_xticks(x, [f"{n}-shot" for n in shots])
    ax.set_ylabel("query accuracy (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def write(results: dict, out_dir: str | Path, **details) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "fewshot.json", {**details, "results": {str(n): r for n, r in results.items()}})
    plot(results, out_dir / "fewshot.png")
