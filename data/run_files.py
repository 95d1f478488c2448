"""A training run's output folder, and how every file of a run (or of an evaluation) is written.

`RunFiles` is the one description of a run's layout (as `WorldFiles` is of a world's), for the trainer that writes it
and for every reader: eval, the sweep, the card and the push. Its files are written whole or not at all: a file by
`write_atomically` (and `write_json`, `save_figure`), a folder by `move_into_place`.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .revisions import revision_name, revision_words


def write_atomically(path: str | os.PathLike, content: str | bytes) -> None:
    """A new file in `path`'s place, written beside it and renamed over it: a kill leaves the old file whole (or
    none), and a hard link to the old file keeps the old content instead of being written through. The folder is
    created if missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, scratch = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(content.encode("utf-8") if isinstance(content, str) else content)
        os.chmod(scratch, 0o644)
        os.replace(scratch, path)
    except BaseException:
        Path(scratch).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, value, indent: int | None = 2) -> None:
    write_atomically(path, json.dumps(value, indent=indent))


def save_figure(figure, path: str | os.PathLike, dpi: int = 120) -> None:
    """A matplotlib figure in the format its name says, written atomically like every other result file."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format=Path(path).suffix.removeprefix(".") or "png", dpi=dpi)
    write_atomically(path, buffer.getvalue())


PARTIAL, REPLACED = "partial", "replaced"  # the suffixes of the hidden folders beside a save in progress


def _hidden_beside(final: str | os.PathLike, suffix: str) -> str:
    parent, name = os.path.split(os.path.normpath(final))
    return os.path.join(parent, f".{name}.{suffix}")


def _hidden_in(folder: Path, suffix: str) -> list[tuple[Path, Path]]:
    """Each hidden folder with `suffix` in `folder`, with the folder it stands beside (`_hidden_beside`'s inverse)."""
    return [(hidden, folder / hidden.name[1:].removesuffix(f".{suffix}"))
            for hidden in sorted(folder.glob(f".*.{suffix}"))]


def partial_path(final: str | os.PathLike) -> str:
    """Where a folder is written before it becomes `final`: beside it, hidden, so that neither the Trainer's
    checkpoint list nor a resume nor `RunFiles.revisions` takes it for a finished save."""
    return _hidden_beside(final, PARTIAL)


def replaced_path(final: str | os.PathLike) -> str:
    """Where a finished folder waits while `move_into_place` replaces it."""
    return _hidden_beside(final, REPLACED)


def unfinished_saves(folder: str | os.PathLike) -> tuple[list[Path], list[tuple[Path, Path]]]:
    """What a kill mid-save leaves in `folder`: the partial folders (`partial_path`), and each folder renamed aside
    by `move_into_place` (`replaced_path`) with the folder it was being replaced as."""
    folder = Path(folder)
    return [partial for partial, _ in _hidden_in(folder, PARTIAL)], _hidden_in(folder, REPLACED)


def move_into_place(staged: str | os.PathLike, final: str | os.PathLike) -> None:
    """Makes the complete folder `staged` the folder `final` by a rename, so that after a kill there is either the
    earlier `final` or the new one, never half a save (an earlier `final` is first renamed aside, then deleted)."""
    replaced = None
    if os.path.lexists(final):
        replaced = replaced_path(final)
        os.replace(final, replaced)
    os.replace(staged, final)
    if replaced:
        shutil.rmtree(replaced)


class Revision(NamedTuple):
    words: int  # words seen when it was saved
    folder: Path


@dataclass(frozen=True)
class RunFiles:
    """Where a training run (`train.py --output_dir root`) keeps each file: the final model at the top (the Trainer
    writes it and its `checkpoint-N` folders), the BabyLM words-seen revisions, the trainer state and the report."""

    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(root))

    # What a training run leaves in its folder; another run into that folder would replace or mix with it.
    OUTPUTS = ("config.json", "adapter_config.json", "model.safetensors", "adapter_model.safetensors",
               "trainer_state.json", "training_args.json", "checkpoint-*", "revisions", "report")

    @property
    def lock(self) -> Path:
        """Held by the run's main process for its lifetime (`pipeline.run.claimed_output_dir`)."""
        return self.root / ".lock"

    @property
    def trainer_state(self) -> Path:
        return self.root / "trainer_state.json"

    def log_history(self) -> list[dict]:
        """The Trainer's log of the finished run; [] for a run without a trainer state (a model saved by hand)."""
        if not self.trainer_state.is_file():
            return []
        return json.loads(self.trainer_state.read_text())["log_history"]

    def final_words_seen(self) -> int | None:
        """The words the final model had seen (the last `words_seen` the trainer logged), or None."""
        return max((e["words_seen"] for e in self.log_history() if "words_seen" in e), default=None)

    @property
    def revisions_dir(self) -> Path:
        return self.root / "revisions"

    def revision(self, words: int) -> Path:
        """The folder of the revision saved at `words` words seen (`revisions/chck_10M`)."""
        return self.revisions_dir / revision_name(words)

    def revisions(self) -> list[Revision]:
        """The run's finished revisions, fewest words first: folders named by `revision_name` that hold a config (a
        save still in progress is a hidden `.chck_*.partial` beside them)."""
        found = []
        for folder in self.revisions_dir.glob("chck_*"):
            if folder.is_dir() and (folder / "config.json").is_file():
                found.append(Revision(revision_words(folder.name), folder))
        return sorted(found)

    @property
    def report_dir(self) -> Path:
        """report.json and its figures (loss curves, gate per word class, knockout.md)."""
        return self.root / "report"

    @property
    def report(self) -> Path:
        """Written last by a run, so its presence means training finished."""
        return self.report_dir / "report.json"

    def read_report(self) -> dict | None:
        return json.loads(self.report.read_text()) if self.report.is_file() else None

    @property
    def zero_shot_dir(self) -> Path:
        """The sweep's zero-shot scores of the final model, and of each revision in a folder of its name."""
        return self.root / "zero_shot"

    @property
    def gpt2_dir(self) -> Path:
        """The trained text stream as a GPT2LMHeadModel (`save_gpt2`)."""
        return self.root / "gpt2"
