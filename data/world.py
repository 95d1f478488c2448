"""The embedded grounded world: seeded scenes of coloured shapes, rendered to pixels, seen through a fixed encoder,
described by a small grammar, and written in the BabyLM file formats so the real-data loaders read it unchanged.

- A scene holds 1-3 objects (colour, shape, size) in distinct cells of a 3x3 grid.
- `SceneEncoder` is a fixed, seeded two-layer convolutional feature extractor. Its *global* embedding pools features
  over the whole canvas, so it keeps which objects are present (colour-shape conjunctions) but loses where they are:
  the paper's global-embedding bottleneck. Its *patch tokens* pool a 4x4 grid and add a positional code, so they keep
  positions. Token embeddings are [global, 16 patches].
- Captions mix content words (colours, shapes, sizes, relations, counts) with function words; question-answer
  captions teach the format of the VQA-style evaluation. Text-only sentences describe scenes nobody shows.
- `write_world` writes: text/{train,dev}/world.{train,dev} (BabyLM text), captions/{split}_captions.json aligned with
  {split}_embeddings.npy (N, D) and {split}_tokens.npy (N, 17, D), and eval/ with minimal pairs (BLiMP fields),
  Winoground-style records (attribute and relation swaps, mirrored so an image-blind model scores exactly 50%),
  VQA-style records (target + 7 distractors) and the eval images' embeddings keyed by image id.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from modeling_gatedgpt import ImageKind

from .run_files import write_atomically, write_json

COLOURS = {
    "red": (0.9, 0.1, 0.1), "green": (0.1, 0.75, 0.2), "blue": (0.15, 0.25, 0.95),
    "yellow": (0.95, 0.9, 0.1), "purple": (0.6, 0.15, 0.75), "orange": (1.0, 0.55, 0.05),
}
SHAPES = ("square", "circle", "triangle", "cross")
SIZES = ("small", "big")
COUNTS = ("zero", "one", "two", "three")
RELATIONS = ("left of", "right of", "above", "below")
GRID = 3
CANVAS = 48
CELL = CANVAS // GRID
PATCH_GRID = 4


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


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    size: str
    row: int
    col: int


Scene = tuple[SceneObject, ...]


def random_scene(rng: random.Random, num_objects: int | None = None) -> Scene:
    """1-3 objects in distinct cells, no two with the same colour and shape (so every description is unambiguous)."""
    num_objects = num_objects or rng.randint(1, 3)
    cells = rng.sample([(r, c) for r in range(GRID) for c in range(GRID)], num_objects)
    kinds = rng.sample([(c, s) for c in COLOURS for s in SHAPES], num_objects)
    return tuple(SceneObject(c, s, rng.choice(SIZES), r, col) for (c, s), (r, col) in zip(kinds, cells))


# --------------------------------------------------------------------------------------------------- rendering


def render(scene: Scene, jitter: np.random.Generator | None = None) -> np.ndarray:
    """RGB float32 image (CANVAS, CANVAS, 3) in [0, 1] on a grey background."""
    image = np.full((CANVAS, CANVAS, 3), 0.5, dtype=np.float32)
    yy, xx = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float32) + 0.5
    for obj in scene:
        dy, dx = jitter.integers(-2, 3, size=2) if jitter is not None else (0, 0)
        cy, cx = obj.row * CELL + CELL / 2 + dy, obj.col * CELL + CELL / 2 + dx
        r = 6.5 if obj.size == "big" else 4.5
        y, x = yy - cy, xx - cx
        if obj.shape == "square":
            mask = (np.abs(x) <= r) & (np.abs(y) <= r)
        elif obj.shape == "circle":
            mask = x**2 + y**2 <= (r * 1.1) ** 2
        elif obj.shape == "triangle":
            mask = (y <= r) & (y >= -r) & (np.abs(x) <= (y + r) / 2)
        else:  # cross
            mask = ((np.abs(x) <= r) & (np.abs(y) <= r / 3)) | ((np.abs(y) <= r) & (np.abs(x) <= r / 3))
        image[mask] = COLOURS[obj.colour]
    return image


class SceneEncoder(torch.nn.Module):
    """A fixed (never trained), seeded image encoder standing in for DINOv2.

    Two random convolutions with ReLU give local features that conjoin colour and edge shape. The global embedding is
    the mean and max of those features over the canvas (position-invariant: keeps *what*, loses *where*); the patch
    tokens average them over a 4x4 grid and add a fixed positional code (keeps *where*). Outputs are standardised with
    statistics of a fixed reference set of scenes, so every dimension has a comparable scale.
    """

    def __init__(self, embed_dim: int = 128, channels: int = 64, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)

        def fixed(*shape, fan_in):
            return torch.randn(*shape, generator=generator) / fan_in**0.5

        self.register_buffer("conv1", fixed(channels, 4, 5, 5, fan_in=100))
        self.register_buffer("bias1", fixed(channels, fan_in=1) * 0.1)
        self.register_buffer("conv2", fixed(channels, channels, 5, 5, fan_in=25 * channels))
        self.register_buffer("global_proj", fixed(2 * channels, embed_dim, fan_in=2 * channels))
        self.register_buffer("patch_proj", fixed(channels, embed_dim, fan_in=channels))
        self.register_buffer("patch_position", fixed(PATCH_GRID**2, embed_dim, fan_in=1) * 0.5)
        self.register_buffer("global_stats", torch.zeros(2, embed_dim))
        self.register_buffer("patch_stats", torch.zeros(2, embed_dim))
        scenes = [random_scene(random.Random(seed * 7919 + i)) for i in range(256)]
        reference = torch.from_numpy(np.stack([render(scene) for scene in scenes]))
        global_raw, patch_raw = self._raw(reference)
        self.global_stats.copy_(torch.stack([global_raw.mean(0), global_raw.std(0) + 1e-6]))
        flat = patch_raw.flatten(0, 1)
        self.patch_stats.copy_(torch.stack([flat.mean(0), flat.std(0) + 1e-6]))

    def _raw(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.permute(0, 3, 1, 2) - 0.5
        x = torch.cat([x, (x.abs().sum(1, keepdim=True) > 0.05).float()], dim=1)  # + a colour-blind figure channel
        x = F.relu(F.conv2d(x, self.conv1, self.bias1, padding=2))
        x = F.relu(F.conv2d(x, self.conv2, stride=2, padding=2))
        pooled = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
        patches = F.adaptive_avg_pool2d(x, PATCH_GRID).flatten(2).transpose(1, 2)  # (B, 16, C), row-major
        return pooled @ self.global_proj, patches @ self.patch_proj

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, H, W, 3) -> global (B, D), tokens (B, 1 + 16, D) = [global, patches]."""
        global_raw, patch_raw = self._raw(images)
        global_embeds = (global_raw - self.global_stats[0]) / self.global_stats[1]
        patches = (patch_raw - self.patch_stats[0]) / self.patch_stats[1] + self.patch_position
        return global_embeds, torch.cat([global_embeds[:, None], patches], dim=1)


def encode_scenes(scenes: list[Scene], encoder: SceneEncoder, seed: int, batch_size: int = 512):
    """Render (with seeded position jitter) and encode; returns float32 arrays (N, D) and (N, 17, D)."""
    jitter = np.random.default_rng(seed)
    global_parts, token_parts = [], []
    for start in range(0, len(scenes), batch_size):
        images = np.stack([render(s, jitter) for s in scenes[start : start + batch_size]])
        g, t = encoder(torch.from_numpy(images))
        global_parts.append(g.numpy())
        token_parts.append(t.numpy())
    return np.concatenate(global_parts), np.concatenate(token_parts)


# --------------------------------------------------------------------------------------------------- grammar


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


def winoground_items(rng: random.Random, num_items: int) -> list[tuple[str, Scene, Scene, str, str]]:
    """(kind, scene_0, scene_1, caption_0, caption_1): caption_i is true of scene_i only."""
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
            items.append(("Attribute", scene, other, c0, c1))
        else:
            other = _swap_positions(scene)
            word = relation(a, b)
            c0 = f"the {a.colour} {a.shape} is {word} the {b.colour} {b.shape} ."
            c1 = f"the {b.colour} {b.shape} is {word} the {a.colour} {a.shape} ."
            items.append(("Relation", scene, other, c0, c1))
    return items


def vqa_items(rng: random.Random, num_items: int) -> list[tuple[Scene, str, str, list[str]]]:
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
        items.append((scene, question, answer, (same_type + others)[:7]))
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
    return "tokens" if ImageKind.parse(kind) is ImageKind.CLS_PATCHES else "embeddings"


def _write_jsonl(path: Path, records: list[dict]) -> None:
    write_atomically(path, "".join(json.dumps(r) + "\n" for r in records))


def write_world(out_dir: str | Path, spec: WorldSpec = WorldSpec()) -> Path:
    """Generate the world into `out_dir` (skipped if a world with the same spec is already there)."""
    files = WorldFiles(out_dir)
    manifest = asdict(spec)
    if files.manifest.exists() and json.loads(files.manifest.read_text()) == manifest:
        return files.root
    if spec.design == "factorial":
        from .factorial_world import write_factorial_world

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
