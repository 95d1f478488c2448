"""A grounded world in which a word's class, whether the scene decides it, and its concreteness vary independently,
for asking what the gate tracks. In the original world every content word is depicted, every function word is fixed
by the template, concreteness does not vary within a class, and each word class is followed by one kind of token, so
a gate pattern by word class can come from the grammar alone.

Every word of a caption belongs to one cell of word class x depicted x concreteness:

| class | depicted: the scene decides which word | not depicted: the scene does not |
| --- | --- | --- |
| content, concrete (Brysbaert >= 3.8) | colours, shapes | things: dog, apple, ... (random) |
| content, abstract (<= 2.7) | same/different (colours), like/unlike (shapes) | notions: idea, hope, ... (random) |
| function, concrete (2.8-3.5) | above/below (the first object's place) | on/under/in/near (random) |
| function, abstract (<= 2.0) | and/but (the two colours agree or not) | the, is, a, ... (fixed by the template) |

A scene holds two objects in different rows; their colours agree in a third of scenes, their shapes in another third.
Templates put words of one type before image-dependent and before image-independent words ("the" before a shape,
and before a thing; "is" before a colour, and before a place; a thing before "above", and before "is"), so that the
gate at a word can be compared with itself across what comes next. A word's cell is a property of the word: no
template uses a depicted word where the template alone decides it (so "and" only ever joins two colour statements,
and "with" joins two shapes). `captions/<split>_cells.json` labels every word.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable

import numpy as np

from modeling_gatedgpt import ImageKind

from .scenes import GRID, Scene, SceneEncoder, SceneObject, encode_scenes

COLOURS = ("red", "blue", "green", "yellow")
SHAPES = ("square", "circle", "triangle", "cross")
THINGS = ("dog", "apple", "chair", "boat", "cup", "shoe", "tree", "bird")
NOTIONS = ("idea", "hope", "truth", "luck", "reason", "mood", "chance", "fact")
PLACES = ("on", "under", "in", "near")

CONTENT, FUNCTION = "content", "function"
CELLS = {  # word -> (class, depicted, concreteness); a word in none of these is a fixed function word
    **{w: (CONTENT, True, "high") for w in (*COLOURS, *SHAPES)},
    **{w: (CONTENT, True, "low") for w in ("same", "different", "like", "unlike")},
    **{w: (CONTENT, False, "high") for w in THINGS},
    **{w: (CONTENT, False, "low") for w in NOTIONS},
    **{w: (FUNCTION, True, "high") for w in ("above", "below")},
    **{w: (FUNCTION, True, "low") for w in ("and", "but")},
    **{w: (FUNCTION, False, "high") for w in PLACES},
}
FIXED = (FUNCTION, False, "low")
PUNCTUATION = "."


def cell(word: str) -> tuple[str, bool, str] | None:
    """(class, depicted, concreteness) of a word of the factorial world; None for punctuation."""
    return None if word == PUNCTUATION else CELLS.get(word, FIXED)


def cell_name(word: str) -> str | None:
    label = cell(word)
    return None if label is None else f"{label[0]}/{'depicted' if label[1] else 'not_depicted'}/{label[2]}"


def random_pair(rng: random.Random) -> Scene:
    """Two objects in different rows: same colour (1/3), same shape (1/3) or neither (1/3), never both."""
    rows = rng.sample(range(GRID), 2)
    colours, shapes = rng.sample(COLOURS, 2), rng.sample(SHAPES, 2)
    agreement = rng.randrange(3)
    if agreement == 0:
        colours[1] = colours[0]
    elif agreement == 1:
        shapes[1] = shapes[0]
    return tuple(SceneObject(c, s, "big", row, rng.randrange(GRID)) for c, s, row in zip(colours, shapes, rows))


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _anything(rng: random.Random) -> str:
    return rng.choice(THINGS if rng.random() < 0.5 else NOTIONS)


def _templates(a: SceneObject, b: SceneObject, rng: random.Random) -> list[Callable[[], str]]:
    """The captions a scene allows (its first object `a`). Sentences that start alike continue alike, so what kind of
    word comes next is known from the words so far; openers ("the", "a", "my", a colour) tell templates apart."""
    place = "above" if a.row < b.row else "below"
    thing, other, where = _anything(rng), _anything(rng), rng.choice(PLACES)
    same_colour, same_shape = a.colour == b.colour, a.shape == b.shape
    templates = [
        lambda: f"the {a.colour} {a.shape} is {place} the {b.colour} {b.shape} .",
        lambda: f"the {thing} is {where} the {other} .",
        lambda: f"{_article(thing)} {thing} is {where} the {a.colour} {a.shape} .",
        lambda: f"my {thing} is {where} {a.colour} {a.shape} .",
        lambda: f"{_article(thing)} {thing} {place} the {b.colour} {b.shape} .",  # the thing names the first object
        lambda: f"one {thing} {place} {b.colour} {b.shape} .",
    ]
    if not same_shape:
        connective = "and" if same_colour else "but"
        templates += [
            lambda: f"the {a.shape} is {a.colour} {connective} the {b.shape} is {b.colour} .",
            lambda: f"{a.colour} is the {a.shape} {connective} {b.colour} is the {b.shape} .",
            lambda: f"the {a.shape} with the {b.shape} are " + (
                f"same {a.colour} ." if same_colour else f"different {a.colour} {b.colour} ."),
        ]
    if not same_colour:
        templates.append(lambda: f"the {a.colour} one is {'like' if same_shape else 'unlike'} the {b.colour} one .")
    return templates


def describe_pair(scene: Scene, rng: random.Random) -> str:
    """One caption of a two-object scene; which object comes first is random."""
    a, b = rng.sample(list(scene), 2)
    return rng.choice(_templates(a, b, rng))()


def write_factorial_world(spec, files) -> None:
    """The text, the captions with their images and every caption's word cells; no evaluation sets (the gate
    analysis reads the dev captions)."""
    rng = random.Random(spec.seed)
    encoder = SceneEncoder(spec.embed_dim, seed=spec.seed)
    for split, count in (("train", spec.train_sentences), ("dev", spec.dev_sentences)):
        files.text_dir(split).mkdir(parents=True, exist_ok=True)
        lines = [describe_pair(random_pair(rng), rng) for _ in range(count)]
        (files.text_dir(split) / f"world.{split}").write_text("\n".join(lines) + "\n")
    for split, count in (("train", spec.train_captions), ("dev", spec.dev_captions)):
        scenes = [random_pair(rng) for _ in range(count)]
        captions = [describe_pair(s, rng) for s in scenes]
        files.captions(split).parent.mkdir(parents=True, exist_ok=True)
        files.captions(split).write_text(json.dumps(captions))
        files.caption_cells(split).write_text(json.dumps([[cell_name(w) for w in c.split()] for c in captions]))
        global_embeds, tokens = encode_scenes(scenes, encoder, seed=rng.randrange(2**31))
        np.save(files.caption_images(split, ImageKind.GLOBAL), global_embeds)
        np.save(files.caption_images(split, ImageKind.CLS_PATCHES), tokens.astype(np.float16))
