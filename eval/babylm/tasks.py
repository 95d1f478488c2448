"""The BabyLM zero-shot tasks, read as the 2025 pipeline reads them.

Every record becomes an `Item`: candidate sentences, the completion of each that is scored (the whole sentence for BLiMP
/ supplement / Winoground / WUG, " " + target for EWoK, " " + answer for VQA, the option after the prefix for entity
tracking, the property phrase for COMPS), the candidate that is correct (always the first), its UID, the metadata the
pipeline breaks accuracy down by and, for the WUG tasks, the human ratio. Two layouts are understood: the official
`evaluation_data/` folder (`full_eval/blimp_filtered`, `fast_eval/blimp_fast`, ..., EWoK as a folder or as the
distributed password-protected zip) and a flat folder with one sub-folder per task (the grounded world's `eval/`)."""

from __future__ import annotations

import json
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import NamedTuple

from gatedgpt2.data import decode_utf8

ENTITY_TRACKING_SPLITS = ("regular", "ambiref", "move_contents")
EWOK_PASSWORD = "BabyLM2025"  # published with the evaluation data


@dataclass(frozen=True)
class Item:
    uid: str
    sentences: tuple[str, ...]
    completions: tuple[str, ...]
    source: str  # file:line, for error messages
    metadata: dict[str, str] = field(default_factory=dict)
    image_id: str | None = None
    label: int = 0
    ratio: float | None = None  # WUG: the human ratio the model's probability of the first candidate is ranked against


@dataclass(frozen=True)
class TaskData:
    name: str
    dataset: str  # the folder's name, as the pipeline names its output folder
    items: list[Item]


def _require(record: dict, names: tuple[str, ...], where: str) -> None:
    for name in names:
        if name not in record:
            raise ValueError(f"{where}: missing field {name!r}; the record has {sorted(record)}.")


def _texts(record: dict, names: tuple[str, ...], where: str) -> tuple[str, ...]:
    """The record's fields that are scored as text, each a string (a number or a list would be scored as its repr)."""
    _require(record, names, where)
    for name in names:
        if not isinstance(record[name], str):
            raise ValueError(f"{where}: field {name!r} must be a string, got {type(record[name]).__name__} "
                             f"{record[name]!r:.80}.")
    return tuple(record[name] for name in names)


def jsonl_records(lines: list[str], name: str) -> Iterator[tuple[dict, str]]:
    """Each non-blank line's JSON object and its "file:line"; a malformed line or one that is not an object is an
    error naming both."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{name}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: malformed JSON ({error.msg} at column {error.colno}).") from None
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}.")
        yield record, where


def _decode_minimal_pair(record: dict, stem: str, where: str) -> Item:
    sentences = _texts(record, ("sentence_good", "sentence_bad"), where)
    if "field" in record:  # BLiMP; the supplement has no field and is grouped by file
        _require(record, ("UID", "linguistics_term"), where)
        metadata = {"field": "syntax/semantics" if record["field"] == "syntax_semantics" else record["field"],
                    "linguistics_term": record["linguistics_term"]}
        uid = record["UID"]
    else:
        metadata = {"field": "supplement", "linguistics_term": "supplement"}
        uid = stem
    return Item(uid, sentences, sentences, where, metadata)


def _decode_ewok(record: dict, stem: str, where: str) -> Item:
    _require(record, ("Domain", "ContextType", "ContextDiff", "TargetDiff"), where)
    _texts(record, ("Context1",), where)
    targets = _texts(record, ("Target1", "Target2"), where)
    return Item(
        uid=record["Domain"],
        sentences=tuple(f"{record['Context1']} {t}" for t in targets),
        completions=tuple(f" {t}" for t in targets),
        source=where,
        metadata={"context_type": record["ContextType"], "context_contrast": record["ContextDiff"],
                  "target_contrast": record["TargetDiff"]},
    )


def _decode_winoground(record: dict, stem: str, where: str) -> Item:
    _require(record, ("caption_0", "caption_1", "tag", "secondary_tag", "collapsed_tag"), where)
    if "image_id" not in record:
        _require(record, ("image_idx", "image_key"), where)
    captions = _texts(record, ("caption_0", "caption_1"), where)
    return Item(
        uid="winoground",  # the official pipeline's spelling, so prediction files go into its collate_preds.sh
        sentences=captions,
        completions=captions,
        source=where,
        metadata={"Type": record["collapsed_tag"], "Linguistic Feature": record["tag"],
                  "Linguistic Sub-Feature": f"{record['tag']} {record['secondary_tag']}"},
        image_id=str(record["image_id"]) if "image_id" in record else f"{record['image_idx']}/{record['image_key']}",
    )


def _decode_vqa(record: dict, stem: str, where: str) -> Item:
    _texts(record, ("question", "target_ans"), where)
    _require(record, ("distractors",), where)
    if "image_id" not in record:
        _require(record, ("idx_in_hf_dataset",), where)
    distractors = record["distractors"]
    if not isinstance(distractors, list) or not distractors or not all(isinstance(d, str) for d in distractors):
        raise ValueError(f"{where}: field 'distractors' must be a non-empty list of strings, got {distractors!r:.80}.")
    answers = (record["target_ans"], *record["distractors"])
    return Item(
        uid="vqa",
        sentences=tuple(f"{record['question']} {a}" for a in answers),
        completions=tuple(f" {a}" for a in answers),
        source=where,
        image_id=str(record["image_id"] if "image_id" in record else record["idx_in_hf_dataset"]),
    )


def _string_list(record: dict, name: str, where: str) -> list[str]:
    _require(record, (name,), where)
    values = record[name]
    if not isinstance(values, list) or len(values) < 2 or not all(isinstance(v, str) for v in values):
        raise ValueError(f"{where}: field {name!r} must be a list of at least 2 strings, got {values!r:.80}.")
    return values


def _decode_entity_tracking(record: dict, stem: str, where: str) -> Item:
    (prefix,) = _texts(record, ("input_prefix",), where)
    options = _string_list(record, "options", where)
    _require(record, ("numops",), where)
    if isinstance(record["numops"], bool) or not isinstance(record["numops"], int):
        raise ValueError(f"{where}: field 'numops' must be an integer, got {record['numops']!r:.40}.")
    return Item(uid=f"{stem}_{record['numops']}_ops", sentences=tuple(prefix + o for o in options),
                completions=tuple(options), source=where)


def _decode_wug(record: dict, stem: str, where: str, task: str) -> Item:
    (joined,) = _texts(record, ("sentences",), where)
    _require(record, ("ratio",), where)
    sentences = tuple(joined.split("\t"))
    if len(sentences) < 2:
        raise ValueError(f"{where}: field 'sentences' must hold the candidate forms separated by a tab, got "
                         f"{joined!r:.80}.")
    try:
        ratio = float(record["ratio"])
    except (TypeError, ValueError):
        raise ValueError(f"{where}: field 'ratio' must be a number, got {record['ratio']!r:.40}.") from None
    return Item(uid=task, sentences=sentences, completions=sentences, source=where, ratio=ratio)  # the pipeline's UID


# COMPS files -> the pipeline's subset names (any other file is the last subset, as the pipeline reads it)
COMPS_SUBSETS = {"comps_base": "base", "comps_wugs": "wugs", "comps_wugs_dist-before": "wugs_dist_before"}


def _decode_comps(record: dict, stem: str, where: str) -> Item:
    acceptable, unacceptable, phrase = _texts(record, ("prefix_acceptable", "prefix_unacceptable", "property_phrase"),
                                              where)
    return Item(uid=COMPS_SUBSETS.get(stem, "wugs_dist_in_between"),
                sentences=(f"{acceptable} {phrase}", f"{unacceptable} {phrase}"), completions=(phrase, phrase),
                source=where)


@dataclass(frozen=True)
class Task:
    """One BabyLM task, whole: where its files are, how a record becomes an `Item`, and how it is scored
    (`scoring`: "choice", the pipeline's accuracy over UIDs; "correlation", Spearman's rho between the first form's
    probability and the human ratio; "reading", R^2 gains of surprisal; the strategies are `zero_shot.SCORINGS`).
    Adding a task is adding its record to `TASKS` (and, if the pipeline's scripts run it, its name to `SUITES`)."""

    name: str
    folders: tuple[str, str]  # its folder in the official layout: (full_eval/..., fast_eval/...)
    decode: Callable[[dict, str, str], Item] | None = None  # (record, file stem, "file:line") -> Item; reading: None
    scoring: str = "choice"
    multimodal: bool = False  # scored with each record's image embedding
    pipeline_task: str | None = None  # the folder `sentence_zero_shot.run --task` writes, if not the task's name
    predicts_sentence: bool = False  # the pipeline's prediction is the chosen sentence, not its completion
    uid_splits: tuple[str, ...] = ()  # the score is the mean over these UID prefixes of their UIDs' mean accuracy

    @property
    def pipeline_name(self) -> str:
        return self.pipeline_task or self.name


TASKS = {task.name: task for task in (
    Task("blimp", ("full_eval/blimp_filtered", "fast_eval/blimp_fast"), _decode_minimal_pair),
    Task("supplement", ("full_eval/supplement_filtered", "fast_eval/supplement_fast"), _decode_minimal_pair,
         pipeline_task="blimp"),
    Task("ewok", ("full_eval/ewok_filtered", "fast_eval/ewok_fast"), _decode_ewok),
    Task("entity_tracking", ("full_eval/entity_tracking", "fast_eval/entity_tracking_fast"), _decode_entity_tracking,
         uid_splits=ENTITY_TRACKING_SPLITS),
    Task("wug_adj", ("full_eval/wug_adj_nominalization", "fast_eval/wug_adj_nominalization"),
         partial(_decode_wug, task="wug_adj"), scoring="correlation"),
    Task("wug_past", ("full_eval/wug_past_tense", "fast_eval/wug_past_tense"), partial(_decode_wug, task="wug_past"),
         scoring="correlation"),
    Task("comps", ("full_eval/comps", "full_eval/comps"), _decode_comps, predicts_sentence=True),  # no fast version
    Task("winoground", ("full_eval/winoground_filtered", "full_eval/winoground_filtered"), _decode_winoground,
         multimodal=True),
    Task("vqa", ("full_eval/vqa_filtered", "full_eval/vqa_filtered"), _decode_vqa, multimodal=True),
    Task("reading", ("full_eval/reading", "fast_eval/reading"), scoring="reading"),  # reading_data.csv
)}
ALL_TASKS = tuple(TASKS)
# the pipeline's eval_zero_shot_fast.sh (every words-seen revision) and eval_zero_shot.sh (the final model)
SUITES = {"fast": ("blimp", "supplement", "ewok", "wug_adj", "wug_past", "entity_tracking", "reading"),
          "full": ("blimp", "supplement", "ewok", "entity_tracking", "wug_adj", "wug_past", "comps", "reading")}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r}; choose from {', '.join(TASKS)}.")
    return TASKS[name]


class JsonlSource(NamedTuple):
    stem: str  # the file's name without .jsonl (the supplement's UID, COMPS's subset)
    name: str  # for messages: the path, or archive:member
    lines: list[str]


def _jsonl_sources(folder: Path, password: str) -> list[JsonlSource]:
    """Every JSONL file of a folder, or of the zip archive next to it."""
    if folder.is_dir():
        files = sorted(folder.glob("*.jsonl"))
        if not files:
            raise FileNotFoundError(f"No *.jsonl files in {folder}.")
        return [JsonlSource(f.stem, str(f), decode_utf8(f.read_bytes(), str(f)).splitlines()) for f in files]
    archive = folder.with_suffix(".zip")
    if not zipfile.is_zipfile(archive):
        raise ValueError(f"{archive}: not a zip archive")
    with zipfile.ZipFile(archive) as zipped:
        members = sorted(m for m in zipped.namelist() if m.endswith(".jsonl"))
        if not members:
            raise FileNotFoundError(f"No *.jsonl files in {archive}.")
        try:
            return [JsonlSource(Path(m).stem, f"{archive}:{m}",
                     decode_utf8(zipped.read(m, pwd=password.encode()), f"{archive}:{m}").splitlines())
                    for m in members]
        # zipfile says "bad password" (RuntimeError) only when the password fails ZipCrypto's one check byte; a wrong
        # password that passes it (1 in 256) decrypts to garbage, which fails decompression or the CRC instead
        except (RuntimeError, zipfile.BadZipFile, zlib.error) as error:
            raise ValueError(f"Cannot decrypt {archive} with the given password: {error}") from None


def task_folder(data_dir: str | Path, task: str, fast: bool = False) -> Path:
    """Where a task's files are: the official layout's folder, or `data_dir/<task>` in a flat layout (the world's
    `blimp/` also serves as its minimal-pair set). A zip archive stands in for a missing folder."""
    folders = get_task(task).folders
    data_dir = Path(data_dir)
    official = (data_dir / "full_eval").is_dir() or (data_dir / "fast_eval").is_dir()
    folder = data_dir / folders[int(fast)] if official else data_dir / task
    if folder.is_dir() or folder.with_suffix(".zip").is_file():
        return folder
    raise FileNotFoundError(
        f"No data for task {task!r} in {data_dir}: looked for {folder} ("
        f"{'holding reading_data.csv' if get_task(task).decode is None else 'a folder of *.jsonl files'}"
        f"{' or a .zip of them' if task == 'ewok' else ''})."
    )


def read_task(data_dir: str | Path, task: str, fast: bool = False, password: str = EWOK_PASSWORD) -> TaskData:
    """All records of one task, in file order (files sorted by name), decoded as the pipeline decodes them."""
    decode = get_task(task).decode
    if decode is None:
        raise ValueError(f"Task {task!r} has no records to read as items (it is scored from its files directly).")
    folder = task_folder(data_dir, task, fast)
    items = [decode(record, stem, where)
             for stem, name, lines in _jsonl_sources(folder, password)
             for record, where in jsonl_records(lines, name)]
    if not items:
        raise ValueError(f"Task {task!r}: the files in {folder} hold no records.")
    return TaskData(task, folder.name, items)
