"""Stand-ins for the BabyLM 2025 evaluation files that are distributed separately (entity tracking, WUG, COMPS,
reading), in the exact formats the official pipeline's readers take: `sentence_zero_shot/read_files.py` (JSONL
fields, file names that become UIDs), `reading/run.py` (the CSV's columns) and `collate_preds.py` (the file names it
re-reads to score the fast evaluation). The contents are made up from fixed word lists and a seeded generator; what
matters is that both scorers read the same files, and that the real files, having the same layout, then work unchanged.

`write_evaluation_data(root, scale)` writes `root/full_eval/...` and `root/fast_eval/...` as the pipeline's
`evaluation_data/` folder holds them."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

THINGS = ["apple", "ball", "book", "cup", "dog", "hat", "key", "shoe", "spoon", "toy", "bird", "coat", "milk", "plate"]


NONCE = ["wug", "blick", "dax", "fep", "tove", "zorp", "glim", "narp", "quib", "sprock"]
PROPERTIES = ["can fly", "has fur", "is red", "can swim", "lays eggs", "has wheels", "is soft", "can bark"]


CONTEXTS = ["the child saw that the", "my mother said the", "we looked at the", "then the little", "after lunch the",
            "she knows that the", "in the garden the", "yesterday a big"]
VERBS = ["ran", "slept", "fell", "sang", "jumped", "smiled", "waited", "played"]


def _jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def entity_tracking(rng: random.Random, per_ops: int) -> list[dict]:
    """Boxes with things moved among them; the question is what one box holds. Options: the truth first, then the
    other boxes' contents; `numops` 0-5 operations, `per_ops` records each."""
    records = []
    for numops in range(6):
        for _ in range(per_ops):
            boxes = [[thing] for thing in rng.sample(THINGS, 4)]
            steps = []
            for _ in range(numops):
                source, target = rng.sample(range(4), 2)
                if boxes[source]:
                    thing = boxes[source].pop()
                    boxes[target].append(thing)
                    steps.append(f" Move the {thing} from Box {source} to Box {target}.")
            start = ", ".join(f"Box {i} contains the {box[0]}" for i, box in enumerate(boxes) if box)
            asked = rng.randrange(4)
            describe = [" and ".join(f"the {t}" for t in box) or "nothing" for box in boxes]
            options = [f" {describe[asked]}."] + [f" {d}." for i, d in enumerate(describe) if i != asked][:2]
            records.append({"input_prefix": f"{start}.{''.join(steps)} Box {asked} contains",
                            "options": options, "numops": numops, "sample_id": len(records)})
    return records


def wug(rng: random.Random, count: int, endings: tuple[str, str]) -> list[dict]:
    """Two forms of a nonce word in one frame, tab-separated, with a human preference ratio for the first."""
    records = []
    for i in range(count):
        stem = rng.choice(NONCE) + rng.choice(["", "le", "ish", "y", "er"])
        frame = rng.choice(["Today the {} is here.", "I like the {} of it.", "We saw {} again."])
        forms = [frame.format(stem + ending) for ending in endings]
        records.append({"sentences": "\t".join(forms), "ratio": round(rng.random(), 3), "id": i})
    return records


def comps(rng: random.Random, count: int, distractor: str | None) -> list[dict]:
    """A property after an acceptable (a kind that has it) and an unacceptable prefix."""
    records = []
    for _ in range(count):
        good, bad = rng.sample(THINGS, 2)
        wug_word = rng.choice(NONCE)
        if distractor is None:
            prefixes = (f"A {good}", f"A {bad}")
        elif distractor == "wugs":
            prefixes = (f"A {wug_word} is a {good}. Therefore, a {wug_word}",
                        f"A {wug_word} is a {bad}. Therefore, a {wug_word}")
        elif distractor == "before":
            prefixes = (f"A {bad} is nice. A {wug_word} is a {good}. Therefore, a {wug_word}",
                        f"A {good} is nice. A {wug_word} is a {bad}. Therefore, a {wug_word}")
        else:
            prefixes = (f"A {wug_word} is a {good}. A {bad} is nice. Therefore, a {wug_word}",
                        f"A {wug_word} is a {bad}. A {good} is nice. Therefore, a {wug_word}")
        records.append({"prefix_acceptable": prefixes[0], "prefix_unacceptable": prefixes[1],
                        "property_phrase": rng.choice(PROPERTIES)})
    return records


def reading_rows(rng: random.Random, sentences: int) -> list[dict]:
    """Word-by-word rows of short sentences: each word after its context, with made-up reading times that grow with
    length and fall with frequency, plus noise; the first word of a sentence has no previous word."""
    rows = []
    for _ in range(sentences):
        words = [*rng.choice(CONTEXTS).split(), rng.choice(THINGS + NONCE), rng.choice(VERBS) + "."]
        words[0] = words[0].capitalize()
        for position in range(1, len(words)):
            word, context = words[position], " ".join(words[:position])
            length = len(word.strip("."))
            frequency = 1.0 if word in NONCE else 3.0 + rng.random()
            time = 200 + 12 * length - 15 * frequency + rng.gauss(0, 20)
            previous = position > 1
            rows.append({
                "item": context, "word": " " + word,
                "prev_item": " ".join(words[: position - 1]) if previous else "",
                "prev_word": " " + words[position - 1] if previous else "",
                "RTfirstfix": round(time * 0.8, 2), "RTfirstpass": round(time, 2),
                "RTgopast": round(time * 1.3 + rng.gauss(0, 15), 2), "RTrightbound": round(time * 1.1, 2),
                "self_paced_reading_time": round(300 + 8 * length + rng.gauss(0, 30), 2),
                **{erp: round(rng.gauss(0, 1), 3) for erp in ("ELAN", "LAN", "N400", "P600", "EPNP", "PNP")},
                "Subtlex_log10": round(frequency, 3), "length": length, "context_length": position,
                "prev_length": len(words[position - 1]) if previous else "",
            })
    # a row whose reading time was not recorded: both scorers must drop it from that measure's fit alone
    rows[3]["RTgopast"] = ""
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def cdi_words(rng: random.Random, contexts: int) -> dict[str, list[dict]]:
    """The AoA word file: each CDI word with sentences it follows (a one-letter word, which the pipeline skips, too)."""
    words = {thing: [{"context": f"{rng.choice(CONTEXTS)} {rng.choice(VERBS)} and the"} for _ in range(contexts)]
             for thing in THINGS}
    words["a"] = [{"context": "this is"}]
    return words


def cdi_table(rng: random.Random) -> list[dict]:
    """Children's CDI proportions per month (16-30): a logistic rise with a word-specific midpoint."""
    rows = []
    for thing in THINGS:
        middle = rng.uniform(18, 28)
        rows.append({"word": thing, **{str(m): round(1 / (1 + 2.718 ** (-(m - middle) / 1.5)), 3)
                                       for m in range(16, 31)}})
    return rows


# (Super)GLUE task -> its fields, as the pipeline's finetune/dataset.py reads them, and its number of labels


GLUE_FIELDS = {"boolq": (("question", "passage"), 2), "mnli": (("premise", "hypothesis"), 3),
               "mrpc": (("sentence1", "sentence2"), 2), "multirc": (("question", "answer", "paragraph"), 2),
               "qqp": (("question1", "question2"), 2), "rte": (("sentence1", "sentence2"), 2),
               "wsc": (("span2_text", "span1_text", "text"), 2)}


def glue(rng: random.Random, task: str, count: int) -> list[dict]:
    """Records whose label a model can learn: the last field repeats the first one's thing (label 0) or names
    another (1; MNLI's 2: nothing)."""
    fields, labels = GLUE_FIELDS[task]
    records = []
    for index in range(count):
        label = index % labels
        thing = rng.choice(THINGS)
        other = rng.choice([t for t in THINGS if t != thing])
        last = {0: f"the {thing} is here", 1: f"the {other} is here", 2: "nothing is here"}[label]
        record = {field: f"where is the {thing}" for field in fields[:-1]}
        record[fields[-1]] = last
        records.append({**record, "label": label, "idx": index})
    return records


def write_evaluation_data(root: Path, scale: int = 1, seed: int = 0) -> Path:
    """The fixture `evaluation_data/` folder; `scale` multiplies the record counts."""
    rng = random.Random(seed)
    full, fast = root / "full_eval", root / "fast_eval"
    for split in ("regular", "ambiref", "move_contents"):
        _jsonl(full / "entity_tracking" / f"{split}.jsonl", entity_tracking(rng, 4 * scale))
    _jsonl(fast / "entity_tracking_fast" / "regular.jsonl", entity_tracking(rng, 2 * scale))
    adjectives, past = wug(rng, 20 * scale, ("ity", "ness")), wug(rng, 10 * scale, ("ed", "t"))
    for folder in (full, fast):
        _jsonl(folder / "wug_adj_nominalization" / "wug_adj_nominalization.jsonl", adjectives)
        _jsonl(folder / "wug_past_tense" / "wug_past_tense.jsonl", past)
    for stem, distractor in (("comps_base", None), ("comps_wugs", "wugs"), ("comps_wugs_dist-before", "before"),
                             ("comps_wugs_dist-in-between", "between")):
        _jsonl(full / "comps" / f"{stem}.jsonl", comps(rng, 10 * scale, distractor))
    rows = reading_rows(rng, 12 * scale)
    for folder in (full, fast):
        write_csv(folder / "reading" / "reading_data.csv", rows)
    for task in GLUE_FIELDS:
        _jsonl(full / "glue_filtered" / f"{task}.train.jsonl", glue(rng, task, 24 * scale))
        _jsonl(full / "glue_filtered" / f"{task}.valid.jsonl", glue(rng, task, 12 * scale))
    (full / "aoa").mkdir(parents=True, exist_ok=True)
    (full / "aoa" / "cdi_childes.json").write_text(json.dumps(cdi_words(rng, 3 * scale)))
    write_csv(root / "cdi_proportions.csv", cdi_table(rng))  # the leaderboard's, not distributed with the data
    return root


def add_text_task_subsets(root: Path, official: Path, files: int = 3, lines: int = 10,
                          password: str = "BabyLM2025") -> Path:
    """BLiMP, supplement and EWoK beside the fixtures, cut from the real evaluation data (`official`): the first
    `lines` records of the first `files` files of each set, so that a whole suite runs in seconds. The real data
    has no full EWoK; its fast records stand in for it."""
    import zipfile

    for folder in ("full_eval/blimp_filtered", "fast_eval/blimp_fast", "full_eval/supplement_filtered",
                   "fast_eval/supplement_fast"):
        for source in sorted((official / folder).glob("*.jsonl"))[:files]:
            target = root / folder / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("".join(source.read_text(encoding="utf-8").splitlines(keepends=True)[:lines]))
    with zipfile.ZipFile(official / "fast_eval" / "ewok_fast.zip") as archive:
        members = sorted(m for m in archive.namelist() if m.endswith(".jsonl"))[:files]
        for folder in ("full_eval/ewok_filtered", "fast_eval/ewok_fast"):
            for member in members:
                text = archive.read(member, pwd=password.encode()).decode("utf-8")
                target = root / folder / Path(member).name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text("".join(text.splitlines(keepends=True)[:lines]))
    return root
