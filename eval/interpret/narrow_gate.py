"""The Narrow Gate toolkit (arXiv 2412.06646), adapted to cross-attention: does visual information reach the text
through one image token (the global/CLS one) or spread over the patches?

- `attention_profile`: per layer, the share of text->image attention that the first (CLS/global) token and the patch
  tokens receive, plain, weighted by how much each position lets the image in (1 - gate), and weighted by value norm.
- `modality_gap`: per layer, |cos| between text hidden states and image token representations (median, quartiles) and
  how well 2-means clustering separates the two modalities (homogeneity, 1 = perfectly).
- `knockout_table`: task accuracy with no knockout, the CLS token, all patches, or k random patches knocked out of
  the chosen cross-attention layers (default: all; post-softmax zeroing and renormalised), the paper's Table 1 layout.
- `activation_patching`: VQA questions asked of one image while the image path carries another's representations;
  distribution similarity sum_v min(p, q) with the other image's answer distribution and the answer-switch rate.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
from scipy.cluster.vq import kmeans2
from scipy.stats import entropy
from tqdm.auto import tqdm

from gatedgpt2.data import ImageEmbeddings
from gatedgpt2.data.run_files import save_figure, write_atomically, write_json
from modeling_gatedgpt import gate_per_token, knockout, patch_image_path, record_image_path
from modeling_gatedgpt.interventions import cross_attention_blocks

from ..babylm.scoring import score_candidates
from ..babylm.tasks import read_task
from ..babylm.zero_shot import evaluate_task, load_accuracy_metric


@contextmanager
def eager_attention(model):
    """Attention weights exist only in the eager implementation."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def _batches(tokenizer, texts, image_indices, batch_size):
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(texts[start : start + batch_size], padding=True, return_tensors="pt")
        yield encoded["input_ids"], encoded["attention_mask"].bool(), image_indices[start : start + batch_size]


@torch.no_grad()
def attention_profile(model, tokenizer, texts, images: np.ndarray, image_indices, batch_size: int = 32) -> dict:
    """{layer: {"cls", "patches", "max_patch", "cls_gate_weighted", "cls_value_weighted"}}: shares of the attention
    from real text positions to the image tokens (averaged over heads, positions and examples)."""
    blocks = cross_attention_blocks(model)
    sums = {i: defaultdict(float) for i in blocks}
    with eager_attention(model), record_image_path(model) as recorded:
        for input_ids, mask, rows in _batches(tokenizer, texts, image_indices, batch_size):
            embeds = torch.from_numpy(np.asarray(images[rows], dtype=np.float32))
            out = model(input_ids=input_ids, attention_mask=mask, image_embeds=embeds, output_attentions=True,
                        output_gates=True)
            for (i, block), weights, gate in zip(blocks.items(), out.cross_attentions, out.gates):
                value = recorded[i].chunk(2, dim=-1)[1]  # (B, N, D)
                value_norm = value.view(*value.shape[:2], block.crossattention.num_heads, -1).norm(dim=-1)
                weights = weights.float()  # (B, H, T, N)
                opening = 1 - gate_per_token(gate)  # (B, T): how much image gets in
                real = mask[:, None, :, None].float()
                plain = (weights * real).sum((1, 2))  # (B, N)
                gated = (weights * real * opening[:, None, :, None]).sum((1, 2))
                valued = (weights * value_norm.transpose(1, 2)[:, :, None, :] * real).sum((1, 2))
                for name, share in (("plain", plain), ("gated", gated), ("valued", valued)):
                    share = share / share.sum(-1, keepdim=True).clamp_min(1e-12)
                    sums[i][f"{name}_cls"] += float(share[:, 0].sum())
                    if share.shape[1] > 1:
                        sums[i][f"{name}_max_patch"] += float(share[:, 1:].max(-1).values.sum())
                sums[i]["n"] += len(rows)
    return {i: {"cls": s["plain_cls"] / s["n"], "patches": 1 - s["plain_cls"] / s["n"],
                "max_patch": s["plain_max_patch"] / s["n"], "cls_gate_weighted": s["gated_cls"] / s["n"],
                "cls_value_weighted": s["valued_cls"] / s["n"]} for i, s in sums.items()}


def homogeneity(labels_true: np.ndarray, labels_cluster: np.ndarray) -> float:
    """1 - H(class | cluster) / H(class): 1 when every cluster holds one modality."""
    classes, clusters = np.unique(labels_true), np.unique(labels_cluster)
    joint = np.array([[np.sum((labels_true == c) & (labels_cluster == k)) for k in clusters] for c in classes], float)
    h_class = entropy(joint.sum(1))
    h_given = sum(joint[:, k].sum() / joint.sum() * entropy(joint[:, k]) for k in range(len(clusters)))
    return 1.0 - h_given / h_class if h_class > 0 else 1.0


@torch.no_grad()
def modality_gap(model, tokenizer, texts, images: np.ndarray, image_indices, batch_size: int = 32,
                 seed: int = 0) -> dict:
    """{layer: {"median_abs_cos", "q1", "q3", "homogeneity"}}, text states entering each cross-attention layer
    against the image encoder's tokens (both in model width)."""
    blocks = cross_attention_blocks(model)
    cosines, text_states, image_states = defaultdict(list), defaultdict(list), []
    with record_image_path(model, layers=[]) as recorded:
        for input_ids, mask, rows in _batches(tokenizer, texts, image_indices, batch_size):
            embeds = torch.from_numpy(np.asarray(images[rows], dtype=np.float32))
            out = model(input_ids=input_ids, attention_mask=mask, image_embeds=embeds, output_hidden_states=True)
            image = torch.nn.functional.normalize(recorded["encoder"].float(), dim=-1)  # (B, N, D)
            image_states.append(image.flatten(0, 1))
            for i in blocks:
                text = torch.nn.functional.normalize(out.hidden_states[i].float(), dim=-1)  # entering block i
                cos = torch.einsum("btd,bnd->btn", text, image).abs()
                cosines[i].append(cos[mask].flatten())
                text_states[i].append(text[mask])
    image_all = torch.cat(image_states).numpy()
    result = {}
    for i in blocks:
        cos = torch.cat(cosines[i]).numpy()
        text_all = torch.cat(text_states[i]).numpy()
        points = np.concatenate([text_all, image_all]).astype(np.float64)
        _, clusters = kmeans2(points, 2, seed=seed, minit="++")
        labels = np.r_[np.zeros(len(text_all)), np.ones(len(image_all))]
        result[i] = {"median_abs_cos": float(np.median(cos)), "q1": float(np.quantile(cos, 0.25)),
                     "q3": float(np.quantile(cos, 0.75)), "homogeneity": homogeneity(labels, clusters)}
    return result


def knockout_sets(num_tokens: int, random_k: int, seeds: int) -> dict[str, list[torch.Tensor]]:
    """The knocked-out token masks of each condition (several random draws for the control)."""
    cls, patches = torch.zeros(num_tokens, dtype=torch.bool), torch.ones(num_tokens, dtype=torch.bool)
    cls[0], patches[0] = True, False
    randoms = []
    for seed in range(seeds):
        chosen = torch.zeros(num_tokens, dtype=torch.bool)
        chosen[1 + torch.randperm(num_tokens - 1, generator=torch.Generator().manual_seed(seed))[:random_k]] = True
        randoms.append(chosen)
    return {"none": [torch.zeros(num_tokens, dtype=torch.bool)], "cls": [cls], "patches": [patches],
            f"random_{random_k}": randoms}


def knockout_table(model, tokenizer, data_dir, images: ImageEmbeddings, tasks=("vqa", "winoground"),
                   random_k: int = 1, seeds: int = 3, layers=None, batch_size: int = 64,
                   variants=("zeroed", "renormalised")) -> dict:
    """{variant: {condition: {task: accuracy}}} for each of `variants` ("zeroed": the knocked-out tokens' attention
    weights are zeroed; "renormalised": they are masked before the softmax); random conditions are the mean over
    `seeds` draws."""
    if images.embeddings.ndim != 3 or images.embeddings.shape[1] < 2:
        raise ValueError(f"Knockout needs CLS + patch tokens; the image embeddings have shape "
                         f"{images.embeddings.shape}.")
    task_data = {t: read_task(data_dir, t) for t in tasks}
    metric = load_accuracy_metric()
    table = {}
    unknown = sorted(set(variants) - {"zeroed", "renormalised"})
    if unknown:
        raise ValueError(f"`variants` must be among ('zeroed', 'renormalised'), got {unknown}.")
    for variant in variants:
        renormalise = variant == "renormalised"
        table[variant] = {}
        for condition, masks in knockout_sets(images.embeddings.shape[1], random_k, seeds).items():
            scores = defaultdict(list)
            for mask in masks:
                context = knockout(model, mask, layers, renormalise) if mask.any() else nullcontext()
                with context:
                    for name, task in task_data.items():
                        result = evaluate_task(model, tokenizer, task, images, batch_size, metric, progress=False)
                        scores[name].append(result["accuracy"])
            table[variant][condition] = {name: float(np.mean(s)) for name, s in scores.items()}
    return table


def _answer_scores(model, tokenizer, question: str, answers: list[str], embed: np.ndarray) -> np.ndarray:
    rows = np.zeros(len(answers), dtype=np.int64)
    return score_candidates(model, tokenizer, [question + a for a in answers], answers, embed, rows,
                            batch_size=len(answers))


def _next_token(model, tokenizer, question: str, embed: np.ndarray) -> torch.Tensor:
    """The distribution over the token after the question ([BOS] question, no [EOS])."""
    prompt = tokenizer(question, return_tensors="pt")["input_ids"][:, :-1]
    return model(input_ids=prompt, image_embeds=torch.from_numpy(np.asarray(embed, dtype=np.float32))).logits[0, -1]\
        .softmax(-1)


@torch.no_grad()
def activation_patching(model, tokenizer, data_dir, images: ImageEmbeddings, max_pairs: int = 200, seed: int = 0,
                        sites: dict | None = None) -> dict:
    """Pairs of VQA records with the same question and different answers. The question is asked of the base record's
    image while the image path carries, at each site, what the target record's image produced there. Sites:
    "encoder" (the image encoder's output), "layer_i" (layer i's cross-attention keys and values) and "layers_0-i"
    (cumulative). Reported per site: mean sum_v min(p, q) between the patched and the target run's next-token
    distributions, and how often the best of the two records' answers becomes the target's (overall, per class pair)."""
    items = read_task(data_dir, "vqa").items
    by_question = defaultdict(list)
    for item in items:
        by_question[item.sentences[0][: -len(item.completions[0])]].append(item)
    pairs = [(question, base, target) for question, group in by_question.items() for base in group for target in group
             if base.completions[0] != target.completions[0]]
    pairs = [pairs[i] for i in np.random.default_rng(seed).permutation(len(pairs))[:max_pairs]]
    layers = list(cross_attention_blocks(model))
    sites = sites or {"encoder": ("encoder",), **{f"layer_{i}": (i,) for i in layers},
                      **{f"layers_0-{i}": tuple(layers[: k + 1]) for k, i in enumerate(layers)}}

    results = {name: defaultdict(list) for name in sites}
    for question, base, target in tqdm(pairs, desc="patching", leave=False):
        embed = {item.image_id: images.rows(images.indices([item.image_id], [item.source])) for item in (base, target)}
        answers = list(dict.fromkeys(base.completions + target.completions))
        with record_image_path(model) as recorded:
            target_next = _next_token(model, tokenizer, question, embed[target.image_id])
        for name, where in sites.items():
            with patch_image_path(model, recorded, where):  # a one-row recording serves every row of one image
                patched_next = _next_token(model, tokenizer, question, embed[base.image_id])
                scores = _answer_scores(model, tokenizer, question, answers, embed[base.image_id])
            results[name]["similarity"].append(float(torch.minimum(patched_next, target_next).sum()))
            results[name]["switched"].append(answers[int(np.argmax(scores))] == target.completions[0])
            results[name]["pair"].append(f"{base.completions[0].strip()}->{target.completions[0].strip()}")

    summary = {}
    for name, r in results.items():
        per_pair = defaultdict(list)
        for pair, switched in zip(r["pair"], r["switched"]):
            per_pair[pair].append(switched)
        summary[name] = {"similarity": float(np.mean(r["similarity"])),
                         "switch_rate": 100 * float(np.mean(r["switched"])), "pairs": len(r["switched"]),
                         "switch_rate_by_class_pair": {p: 100 * float(np.mean(v)) for p, v in sorted(per_pair.items())}}
    return summary


def plot_attention_profile(profile: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = sorted(profile)
    x = np.arange(len(layers))
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(layers), 3.2))
    for offset, (key, label) in zip((-0.25, 0, 0.25), (("cls", "attention"), ("cls_gate_weighted", "x (1 - gate)"),
                                                         ("cls_value_weighted", "x |value|"))):
        ax.bar(x + offset, [profile[i][key] for i in layers], width=0.25, label=label)
    ax.plot(x, [profile[i]["max_patch"] for i in layers], "k.--", label="largest patch")
    ax.set_xticks(x, [str(i) for i in layers])
    ax.set_xlabel("layer")
    ax.set_ylabel("share of text->image attention on CLS")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def knockout_markdown(table: dict) -> str:
    tasks = list(next(iter(next(iter(table.values())).values())))
    lines = [f"| knocked out | {' | '.join(f'{t} ({v})' for v in table for t in tasks)} |",
             f"| --- |{' ---: |' * (len(tasks) * len(table))}"]
    for condition in next(iter(table.values())):
        cells = [f"{table[v][condition][t]:.1f}" for v in table for t in tasks]
        lines.append(f"| {condition} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def narrow_gate_report(model, tokenizer, data_dir, images: ImageEmbeddings, out_dir, random_k: int = 1,
                       seeds: int = 3, max_pairs: int = 200, batch_size: int = 64, layers=None) -> dict:
    """All four analyses on a folder with Winoground- and VQA-style tasks (knockout in `layers`, default all); writes
    narrow_gate.json, knockout.md and attention_profile.png into `out_dir`."""

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    captions = read_task(data_dir, "winoground").items
    texts = [item.sentences[0] for item in captions]
    rows = images.indices([item.image_id for item in captions], [item.source for item in captions])
    report = {
        "attention_profile": attention_profile(model, tokenizer, texts, images.embeddings, rows),
        "modality_gap": modality_gap(model, tokenizer, texts, images.embeddings, rows),
        "knockout": knockout_table(model, tokenizer, data_dir, images, random_k=random_k, seeds=seeds,
                                   layers=layers, batch_size=batch_size),
        "patching": activation_patching(model, tokenizer, data_dir, images, max_pairs=max_pairs),
    }
    write_json(out_dir / "narrow_gate.json", report)
    write_atomically(out_dir / "knockout.md", knockout_markdown(report["knockout"]))
    plot_attention_profile(report["attention_profile"], out_dir / "attention_profile.png")
    return report
