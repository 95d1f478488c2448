"""Bring a saved checkpoint's code up to date without touching its weights.

A checkpoint carries the model code it was saved with, and its users load that code with their own transformers. A
checkpoint saved before the code was portable (e.g. one that fails under transformers 5.24 or 4.51.3) is updated in
place: its code files are replaced by this package's (and any file they now import is added), `auto_map` names all
three Auto classes, a tokenizer saved under 5.x's class name `TokenizersBackend` is renamed to
`PreTrainedTokenizerFast`, and an image processor nested in `processor_config.json` gets its own
`preprocessor_config.json`. Weights, card and everything else stay as they are. For a Hub repository the changed
files go up in one commit.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import modeling_gatedgpt
from gatedgpt2.data import PreTrainedTokenizerFast
from gatedgpt2.data.model_folder import check_model_folder
from gatedgpt2.data.run_files import write_atomically
from modeling_gatedgpt.modeling_gatedgpt import checkpoint_auto_map
from modeling_gatedgpt.processing_gatedgpt import split_processor_config

from .push import code_closure

PACKAGE = Path(modeling_gatedgpt.__file__).parent
PROCESSOR_MODULE = modeling_gatedgpt.GatedGPT2Processor.__module__.split(".")[-1]
PORTABLE_TOKENIZER_CLASS = PreTrainedTokenizerFast.__name__  # what training and eval save tokenizers as


def _json_text(values: dict) -> str:
    return json.dumps(values, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def planned_updates(model_dir: str | Path) -> dict[str, str]:
    """{file name: its new text} for every file of the checkpoint folder that differs from the current code."""
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{model_dir} has no config.json: not a checkpoint folder")
    config = json.loads(config_path.read_text())
    if config.get("model_type") != modeling_gatedgpt.GatedGPT2Config.model_type:
        raise ValueError(f"{config_path}: model_type is {config.get('model_type')!r}, expected "
                         f"{modeling_gatedgpt.GatedGPT2Config.model_type!r}; this updates GatedGPT2 checkpoints only")

    new: dict[str, str] = {}
    auto_map = checkpoint_auto_map()
    config["auto_map"] = {**config.get("auto_map", {}), **auto_map}
    new["config.json"] = _json_text(config)

    entry_modules = {target.split(".")[0] for target in auto_map.values()}
    processor_path = model_dir / "processor_config.json"
    if processor_path.is_file():
        entry_modules.add(PROCESSOR_MODULE)
        processor, image_processor = split_processor_config(json.loads(processor_path.read_text()))
        new["processor_config.json"] = _json_text(processor)
        if image_processor is not None and not (model_dir / "preprocessor_config.json").exists():
            new["preprocessor_config.json"] = _json_text(image_processor)
    for name in code_closure(PACKAGE, entry_modules):
        new[name] = (PACKAGE / name).read_text()

    tokenizer_path = model_dir / "tokenizer_config.json"
    if tokenizer_path.is_file():
        tokenizer = json.loads(tokenizer_path.read_text())
        if tokenizer.get("tokenizer_class") == "TokenizersBackend":
            tokenizer["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
            new["tokenizer_config.json"] = _json_text(tokenizer)

    def unchanged(name: str, text: str) -> bool:
        path = model_dir / name
        if not path.is_file():
            return False
        if name.endswith(".json"):
            return json.loads(path.read_text()) == json.loads(text)
        return path.read_text() == text

    return {name: text for name, text in new.items() if not unchanged(name, text)}


def _report(model_dir: Path, changes: dict[str, str]) -> dict[str, str]:
    return {name: "updated" if (model_dir / name).exists() else "added" for name in changes}


def update_folder(model_dir: str | Path, dry_run: bool = False) -> dict[str, str]:
    """Update a checkpoint folder in place; return {file name: "added" | "updated"} (what would change, if dry_run)."""
    model_dir = Path(model_dir)
    changes = planned_updates(model_dir)
    check_model_folder(model_dir, load_weights=True)
    report = _report(model_dir, changes)
    if not dry_run:
        for name, text in changes.items():
            target = model_dir / name
            if target.is_symlink():
                raise ValueError(f"{target} is a symbolic link; refusing to write through it")
            write_atomically(target, text)
    return report


def update_repo(repo_id: str, revision: str | None = None, dry_run: bool = False, api=None) -> dict[str, str]:
    """Update a Hub repository's code: download its small files (not the weights), update them, and upload what
    changed in one commit."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = api or HfApi()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(api.snapshot_download(repo_id, revision=revision, local_dir=scratch,
                                            allow_patterns=["*.json", "*.py"]))
        changes = planned_updates(folder)
        report = _report(folder, changes)
        if changes and not dry_run:
            api.create_commit(
                repo_id,
                operations=[CommitOperationAdd(path_in_repo=name, path_or_fileobj=text.encode())
                            for name, text in sorted(changes.items())],
                commit_message="Update the model code to the portable GatedGPT2 code (weights unchanged)",
                revision=revision, repo_type="model",
            )
    return report


def update_code(model: str, revision: str | None = None, dry_run: bool = False, api=None) -> dict[str, str]:
    """`model` is a checkpoint folder, or else a Hub repository id."""
    if Path(model).exists():
        if revision is not None:
            raise ValueError("--revision applies to Hub repositories; a local folder is updated as it is")
        return update_folder(model, dry_run)
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", model):
        raise FileNotFoundError(f"--model {model!r} is neither an existing folder nor a Hub repository id (ORG/NAME)")
    return update_repo(model, revision, dry_run, api)
