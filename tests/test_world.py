"""The embedded grounded world: determinism, formats, and the visual information in its embeddings."""

import json
import random

import numpy as np
import pytest

from gatedgpt2.data import load_caption_shards, text_files
from gatedgpt2.data.scenes import COLOURS, SHAPES, SceneEncoder, encode_scenes, random_scene
from gatedgpt2.data.world import WorldSpec, write_world


def ridge_probe(features, labels, train: int, classes: int) -> float:
    """Held-out accuracy of a one-vs-all ridge regression probe."""
    x = np.c_[features, np.ones(len(features))]
    w = np.linalg.solve(x[:train].T @ x[:train] + 0.1 * np.eye(x.shape[1]),
                        x[:train].T @ np.eye(classes)[labels[:train]])
    return float((np.argmax(x[train:] @ w, 1) == labels[train:]).mean())


@pytest.fixture(scope="module")
def encoder():
    return SceneEncoder(embed_dim=128, seed=0)


def test_global_embedding_keeps_colour_and_shape(encoder):
    rng = random.Random(1)
    scenes = [random_scene(rng, 1) for _ in range(3000)]
    global_embeds, _ = encode_scenes(scenes, encoder, seed=3)
    colour = np.array([list(COLOURS).index(s[0].colour) for s in scenes])
    shape = np.array([SHAPES.index(s[0].shape) for s in scenes])
    assert ridge_probe(global_embeds, colour, 2000, len(COLOURS)) >= 0.95
    assert ridge_probe(global_embeds, shape, 2000, len(SHAPES)) >= 0.95


def test_patch_tokens_keep_left_right_but_the_global_embedding_loses_it(encoder):
    rng = random.Random(2)
    scenes = []
    while len(scenes) < 3000:
        scene = random_scene(rng, 2)
        if scene[0].col != scene[1].col and scene[0].colour != scene[1].colour:
            scenes.append(scene)
    global_embeds, tokens = encode_scenes(scenes, encoder, seed=4)
    left_colour = np.array([list(COLOURS).index(min(s, key=lambda o: o.col).colour) for s in scenes])
    patches = tokens[:, 1:].reshape(len(scenes), -1)
    assert ridge_probe(patches, left_colour, 2000, len(COLOURS)) >= 0.9
    assert ridge_probe(global_embeds, left_colour, 2000, len(COLOURS)) <= 0.75  # which of the two colours is left?


def test_world_is_deterministic_and_written_in_the_babylm_formats(tmp_path, tiny_world):
    from tests.helpers.training import TINY_WORLD

    again = write_world(tmp_path / "again", WorldSpec(**TINY_WORLD))
    for path in sorted(p.relative_to(tiny_world) for p in tiny_world.rglob("*") if p.is_file()):
        assert (again / path).read_bytes() == (tiny_world / path).read_bytes(), path
    assert text_files(tiny_world / "text" / "train")
    captions, store = load_caption_shards([tiny_world / "captions" / "train_captions.json"],
                                          [tiny_world / "captions" / "train_global.npy"], 32)
    assert len(captions) == len(store) == TINY_WORLD["train_captions"]
    _, tokens = load_caption_shards([tiny_world / "captions" / "train_captions.json"],
                                    [tiny_world / "captions" / "train_cls_patches.npy"])
    assert tokens.row_shape == (17, 32)


def test_eval_sets_follow_the_babylm_records(tiny_world):
    def jsonl(path):
        return [json.loads(line) for line in path.read_text().splitlines()]

    pairs = [r for f in (tiny_world / "eval" / "blimp").glob("*.jsonl") for r in jsonl(f)]
    assert {"sentence_good", "sentence_bad", "UID", "pair_id"} <= set(pairs[0])
    assert all(p["sentence_good"] != p["sentence_bad"] for p in pairs)
    wino = jsonl(tiny_world / "eval" / "winoground" / "winoground.jsonl")
    assert {r["collapsed_tag"] for r in wino} == {"Attribute", "Relation"}
    for first, second in zip(wino[::2], wino[1::2]):  # mirrored: an image-blind model scores exactly 50%
        assert (first["caption_0"], first["caption_1"]) == (second["caption_1"], second["caption_0"])
        assert first["image_id"] != second["image_id"]
    vqa = jsonl(tiny_world / "eval" / "vqa" / "vqa.jsonl")
    assert all(len(r["distractors"]) == 7 and r["target_ans"] not in r["distractors"] for r in vqa)
    ids = json.loads((tiny_world / "eval" / "images" / "image_ids.json").read_text())
    assert {r["image_id"] for r in wino + vqa} <= set(ids)
    assert np.load(tiny_world / "eval" / "images" / "global.npy").shape == (len(ids), 32)
