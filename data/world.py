"""The embedded grounded world: seeded scenes of coloured shapes (`scenes.py`: rendered to pixels, seen through a
fixed encoder), described by a small grammar, and written in the BabyLM file formats so the real-data loaders read it
unchanged. `write_world` writes either design: this module's original one or the factorial one (`factorial_world.py`).

- Captions mix content words (colours, shapes, sizes, relations, counts) with function words; question-answer
  captions teach the format of the VQA-style evaluation. Text-only sentences describe scenes nobody shows.
- `write_world` writes: text/{train,dev}/world.{train,dev} (BabyLM text), captions/{split}_captions.json aligned with
  {split}_global.npy (N, D) and {split}_cls_patches.npy (N, 17, D), and eval/ with minimal pairs (BLiMP fields),
  Winoground-style records (attribute and relation swaps, mirrored so an image-blind model scores exactly 50%),
  VQA-style records (target + 7 distractors) and the eval images' embeddings keyed by image id.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from modeling_gatedgpt import ImageKind

from .factorial_world import write_factorial_world
from .run_files import write_atomically, write_json
from .scenes import COLOURS, COUNTS, SHAPES, SIZES, Scene, SceneEncoder, SceneObject, encode_scenes, random_scene


def plural(noun: str, version: int = 3) -> str:
    """Version 2 of the world (the committed grounded-world and BabyLM runs) wrote every plural with "s": "crosss"."""
    return noun + "es" if version >= 3 and noun.endswith(("s", "x", "ch", "sh")) else noun + "s"


# Word classes for the gate-per-class report. Everything else in the grammar is a function word.
WORD_CLASSES = {
    **{w: "colour" for w in COLOURS}, **{w: "shape" for w in SHAPES},
    **{plural(w, v): "shape" for w in SHAPES for v in (2, 3)},
    **{w: "size" for w in SIZES}, **{w: "count" for w in COUNTS},
    "left": "relation", "right": "relation", "above": "relation", "below": "relation",
}


def word_class(word: str) -> str:
    return WORD_CLASSES.get(word.lower(), "function")


def noun_phrase(obj: SceneObject, rng: random.Random, determiner: str = "a", with_size: bool | None = None) -> str:
    with_size = rng.random() < 0.4 if with_size is None else with_size
    words = ([obj.size] if with_size else []) + [obj.colour, obj.shape]
    if determiner == "a" and words[0][0] in "aeiou":
        determiner = "an"
    return " ".join([determiner, *words])


def relation(a: SceneObject, b: SceneObject) -> str:
    if a.col != b.col:
        return "left of" if a.col < b.col else "right of"
    return "above" if a.row < b.row else "below"


def describe(scene: Scene, rng: random.Random, version: int = 3) -> str:
    """One caption for a scene, from a template chosen at random, in the world's grammar `version`."""
    a = scene[0]
    if len(scene) == 1:
        templates = (
            (1, lambda: f"there is {noun_phrase(a, rng)} ."),
            (1, lambda: f"the {a.shape} is {a.colour} ."),
            (1, lambda: f"what colour is the {a.shape} ? {a.colour} ."),
            (1, lambda: f"i see one {a.size} {a.colour} {a.shape} ."),
        )
    else:
        b = scene[1]
        same_shape = sum(o.shape == a.shape for o in scene)
        same_colour = sum(o.colour == a.colour for o in scene)
        # Conjunctions ("a red circle and a blue square") are what teaches which colour goes with which shape.
        templates = (
            (4, lambda: f"there is {noun_phrase(a, rng)} and {noun_phrase(b, rng)} ."),
            (2, lambda: f"{noun_phrase(a, rng, 'the', False)} is {relation(a, b)} "
                        f"{noun_phrase(b, rng, 'the', False)} ."),
            (1, lambda: f"there are {COUNTS[len(scene)]} objects ."),
            (2, lambda: f"what shape is the {a.colour} object ? {a.shape} ." if same_colour == 1
             else f"there are {COUNTS[len(scene)]} objects ."),
            (1, lambda: f"there are {COUNTS[same_shape]} {plural(a.shape, version)} ." if same_shape > 1
             else f"how many objects are there ? {COUNTS[len(scene)]} ."),
        )
    weights, makers = zip(*templates)
    return rng.choices(makers, weights=weights)[0]()


# --------------------------------------------------------------------------------------------------- evaluation sets


def minimal_pairs(rng: random.Random, per_uid: int, version: int = 3) -> list[dict]:
    """BLiMP-format minimal pairs over the world's grammar; the first sentence is the grammatical one."""
    makers = {
        "determiner_a_an": lambda s: (
            f"there is {noun_phrase(s[0], rng, with_size=False)} .",
            f"there is {'a' if s[0].colour[0] in 'aeiou' else 'an'} {s[0].colour} {s[0].shape} ."),
        "count_noun_agreement": lambda s: (
            f"there are two {plural(s[0].shape, version)} .", f"there are two {s[0].shape} ."),
        "existential_there_agreement": lambda s: (
            f"there are {COUNTS[len(s)]} objects .", f"there is {COUNTS[len(s)]} objects ."),
        "adjective_order": lambda s: (
            f"i see one {s[0].size} {s[0].colour} {s[0].shape} .",
            f"i see one {s[0].colour} {s[0].size} {s[0].shape} ."),
        "relation_word_order": lambda s: (
            f"the {s[0].colour} {s[0].shape} is {relation(s[0], s[1])} the {s[1].colour} {s[1].shape} .",
            f"the {s[0].colour} {s[0].shape} is the {relation(s[0], s[1])} {s[1].colour} {s[1].shape} ."),
    }
    records = []
    for uid, make in makers.items():
        for pair_id in range(per_uid):
            scene = random_scene(rng, rng.choice([2, 3]))
            good, bad = make(scene)
            records.append({"sentence_good": good, "sentence_bad": bad, "field": "world", "linguistics_term": uid,
                            "UID": uid, "simple_LM_method": True, "one_prefix_method": False,
                            "two_prefix_method": False,
                            "lexically_identical": sorted(good.split()) == sorted(bad.split()), "pair_id": pair_id})
    return records


def _swap_colours(scene: Scene) -> Scene:
    a, b = scene[:2]
    return (replace(a, colour=b.colour), replace(b, colour=a.colour), *scene[2:])


def _swap_positions(scene: Scene) -> Scene:
    a, b = scene[:2]
    return (replace(a, row=b.row, col=b.col), replace(b, row=a.row, col=a.col), *scene[2:])


class WinogroundItem(NamedTuple):
    kind: str  # "Attribute" or "Relation"
    scene_0: Scene
    scene_1: Scene
    caption_0: str  # true of scene_0 only
    caption_1: str  # true of scene_1 only


class VqaItem(NamedTuple):
    scene: Scene
    question: str
    answer: str
    distractors: list[str]


def winoground_items(rng: random.Random, num_items: int) -> list[WinogroundItem]:
    """Attribute swaps and relation swaps, alternately: caption_i is true of scene_i only."""
    items = []
    while len(items) < num_items:
        scene = random_scene(rng, 2)
        a, b = scene
        if len(items) % 2 == 0:
            if a.shape == b.shape or a.colour == b.colour:
                continue
            other = _swap_colours(scene)
            a1, b1 = other[:2]
            c0 = f"there is {noun_phrase(a, rng, with_size=False)} and {noun_phrase(b, rng, with_size=False)} ."
            c1 = f"there is {noun_phrase(a1, rng, with_size=False)} and {noun_phrase(b1, rng, with_size=False)} ."
            items.append(WinogroundItem("Attribute", scene, other, c0, c1))
        else:
            other = _swap_positions(scene)
            word = relation(a, b)
            c0 = f"the {a.colour} {a.shape} is {word} the {b.colour} {b.shape} ."
            c1 = f"the {b.colour} {b.shape} is {word} the {a.colour} {a.shape} ."
            items.append(WinogroundItem("Relation", scene, other, c0, c1))
    return items


def vqa_items(rng: random.Random, num_items: int) -> list[VqaItem]:
    """(scene, question, answer, 7 distractors), answers of the question's type first among the distractors."""
    items = []
    while len(items) < num_items:
        scene = random_scene(rng)
        a = scene[0]
        kind = rng.randrange(3)
        if kind < 2 and sum(o.shape == a.shape if kind == 0 else o.colour == a.colour for o in scene) > 1:
            continue  # the question would be ambiguous
        if kind == 0:
            question, answer, pool = f"what colour is the {a.shape} ?", a.colour, list(COLOURS)
        elif kind == 1:
            question, answer, pool = f"what shape is the {a.colour} object ?", a.shape, list(SHAPES)
        else:
            question, answer, pool = "how many objects are there ?", COUNTS[len(scene)], list(COUNTS)
        same_type = [w for w in pool if w != answer]
        others = [w for w in [*COLOURS, *SHAPES, *COUNTS] if w not in pool]
        rng.shuffle(same_type)
        rng.shuffle(others)
        items.append(VqaItem(scene, question, answer, (same_type + others)[:7]))
    return items


# --------------------------------------------------------------------------------------------------- writing


WORLD_VERSIONS = (2, 3)  # 3 spells the plural of "cross" "crosses"; 2 reproduces the runs committed before it
WORLD_DESIGNS = ("original", "factorial")


@dataclass
class WorldSpec:
    """`design`: "original" (this module) or "factorial" (`factorial_world`: word class, depiction and concreteness
    crossed; only the text, captions and sizes below apply)."""

    seed: int = 0
    train_captions: int = 6000
    train_sentences: int = 6000
    dev_captions: int = 500
    dev_sentences: int = 500
    minimal_pairs_per_uid: int = 100
    winoground_items: int = 200
    vqa_items: int = 300
    embed_dim: int = 128
    version: int = WORLD_VERSIONS[-1]
    design: str = "original"
    # 2: image files named by their `ImageKind` (global, cls_patches); a world written before (1: embeddings,
    # tokens) has no such field in its manifest and is written again
    file_layout: int = 2

    def __post_init__(self):
        if self.version not in WORLD_VERSIONS:
            raise ValueError(f"world version must be one of {WORLD_VERSIONS}, got {self.version!r}")
        if self.design not in WORLD_DESIGNS:
            raise ValueError(f"world design must be one of {WORLD_DESIGNS}, got {self.design!r}")


@dataclass(frozen=True)
class WorldFiles:
    """Where a generated world keeps each file: the one description of its layout, for the generator and every
    reader. Splits are "train" and "dev"; the images of captions and of evaluation records come in both kinds."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    @property
    def manifest(self) -> Path:
        return self.root / "world.json"

    def text_dir(self, split: str) -> Path:
        """BabyLM text: one file `world.<split>`, read with the pattern `text_pattern(split)`."""
        return self.root / "text" / split

    @staticmethod
    def text_pattern(split: str) -> str:
        return f"*.{split}"

    def captions(self, split: str) -> Path:
        return self.root / "captions" / f"{split}_captions.json"

    def caption_cells(self, split: str) -> Path:
        """The factorial world's label of every word of every caption (`factorial_world.cell_name`)."""
        return self.root / "captions" / f"{split}_cells.json"

    def caption_images(self, split: str, kind: ImageKind | str) -> Path:
        """The captions' image embeddings, row-aligned: (N, D) global, (N, 1 + P, D) CLS + patches."""
        return self.root / "captions" / f"{split}_{_image_file_stem(kind)}.npy"

    @property
    def eval_dir(self) -> Path:
        """The held-out tasks (blimp/, winoground/, vqa/), read by the zero-shot suite as BabyLM task folders."""
        return self.root / "eval"

    def eval_images(self, kind: ImageKind | str) -> Path:
        return self.task_images(self.eval_dir, kind)

    @staticmethod
    def task_images(eval_dir: str | Path, kind: ImageKind | str) -> Path:
        """The evaluation records' image embeddings in an evaluation folder like the world's (its `images/`), keyed
        by the ids in `image_ids.json` beside them."""
        return Path(eval_dir) / "images" / f"{_image_file_stem(kind)}.npy"


def _image_file_stem(kind: ImageKind | str) -> str:
    return ImageKind.parse(kind).value


def _write_jsonl(path: Path, records: list[dict]) -> None:
    write_atomically(path, "".join(json.dumps(r) + "\n" for r in records))


def write_world(out_dir: str | Path, spec: WorldSpec = WorldSpec()) -> Path:
    """Generate the world into `out_dir` (skipped if a world with the same spec is already there)."""
    files = WorldFiles(out_dir)
    manifest = asdict(spec)
    if files.manifest.exists() and json.loads(files.manifest.read_text()) == manifest:
        return files.root
    if spec.design == "factorial":
        write_factorial_world(spec, files)
        write_json(files.manifest, manifest, indent=None)
        return files.root
    rng = random.Random(spec.seed)
    encoder = SceneEncoder(spec.embed_dim, seed=spec.seed)

    for split, num_sentences in (("train", spec.train_sentences), ("dev", spec.dev_sentences)):
        lines = [describe(random_scene(rng), rng, spec.version) for _ in range(num_sentences)]
        files.text_dir(split).mkdir(parents=True, exist_ok=True)
        (files.text_dir(split) / f"world.{split}").write_text("\n".join(lines) + "\n")

    for split, num_captions in (("train", spec.train_captions), ("dev", spec.dev_captions)):
        scenes = [random_scene(rng) for _ in range(num_captions)]
        write_json(files.captions(split), [describe(s, rng, spec.version) for s in scenes], indent=None)
        global_embeds, tokens = encode_scenes(scenes, encoder, seed=rng.randrange(2**31))
        np.save(files.caption_images(split, ImageKind.GLOBAL), global_embeds)
        np.save(files.caption_images(split, ImageKind.CLS_PATCHES), tokens.astype(np.float16))

    records = minimal_pairs(rng, spec.minimal_pairs_per_uid, spec.version)
    for uid in dict.fromkeys(r["UID"] for r in records):
        _write_jsonl(files.eval_dir / "blimp" / f"{uid}.jsonl", [r for r in records if r["UID"] == uid])

    image_ids, eval_scenes = [], []

    def add_image(scene: Scene) -> str:
        image_ids.append(f"world_{len(image_ids)}")
        eval_scenes.append(scene)
        return image_ids[-1]

    wino = []
    for item, (kind, s0, s1, c0, c1) in enumerate(winoground_items(rng, spec.winoground_items)):
        for image_key, scene, (first, second) in (("image_0", s0, (c0, c1)), ("image_1", s1, (c1, c0))):
            wino.append({"id": len(wino), "caption_0": first, "caption_1": second, "tag": f"{kind}-world",
                         "secondary_tag": "", "num_main_preds": 1, "collapsed_tag": kind, "image_idx": item,
                         "image_key": image_key, "image_id": add_image(scene)})
    _write_jsonl(files.eval_dir / "winoground" / "winoground.jsonl", wino)

    vqa = [{"question_id": i, "question": q, "target_ans": answer, "distractors": distractors,
            "image_id": add_image(scene)}
           for i, (scene, q, answer, distractors) in enumerate(vqa_items(rng, spec.vqa_items))]
    _write_jsonl(files.eval_dir / "vqa" / "vqa.jsonl", vqa)

    global_embeds, tokens = encode_scenes(eval_scenes, encoder, seed=rng.randrange(2**31))
    files.eval_images(ImageKind.GLOBAL).parent.mkdir(parents=True, exist_ok=True)
    np.save(files.eval_images(ImageKind.GLOBAL), global_embeds)
    np.save(files.eval_images(ImageKind.CLS_PATCHES), tokens.astype(np.float16))
    write_json(files.eval_images(ImageKind.GLOBAL).parent / "image_ids.json", image_ids, indent=None)
    write_json(files.manifest, manifest, indent=None)
    return files.root
