"""Upload a checkpoint folder to the Hub: exactly the files a user needs, in one commit, to `main` or to a revision
branch (the BabyLM `chck_*M` checkpoints).

What is sent is an allow-list of what a checkpoint is, by name, each file checked by its content:
- weights: `model.safetensors` (or its shards and index) or `adapter_model.safetensors`, opened with safetensors;
- configuration and tokenizer: `config.json`, `generation_config.json`, `adapter_config.json`, `tokenizer.json`,
  `tokenizer_config.json`, `special_tokens_map.json`, `processor_config.json`, `preprocessor_config.json` (each a
  JSON object), and `chat_template.jinja`;
- the model code: the `.py` files the `auto_map` entries of those configs name, and what they import (`from .x
  import y`), as transformers follows them; no other Python file (an entry that is not a plain module of the folder,
  such as a path, is refused);
- `README.md` (the card) and `figures/*.png` (each a PNG image, read with Pillow).
Everything else (checkpoints with their pickled optimizer state, revisions, reports, caches) stays home. A symbolic
link, a hard-linked file, or anything that is not a regular file, among these is refused, never followed; so is a
folder that holds pickled weights (`*.bin`, `*.pt`, ... in any letter case), whose user may believe them published,
a folder that would not load as saved (`check_model_folder`), and a card that names the local folder."""

from __future__ import annotations

import json
import re
import shutil
import stat
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi

from gatedgpt2.data.model_folder import check_model_folder
from gatedgpt2.data.run_files import RunFiles

CONFIG_FILES = ("config.json", "generation_config.json", "adapter_config.json", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json", "processor_config.json",
                "preprocessor_config.json", "model.safetensors.index.json")
TEXT_FILES = ("README.md", "chat_template.jinja")
WEIGHTS = re.compile(r"(model(-\d{5}-of-\d{5})?|adapter_model)\.safetensors")
FIGURES = "figures"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def code_closure(folder: Path, entry_modules: set[str]) -> list[str]:
    """The `.py` files of `folder` that the entry modules need, following `from .x import` as transformers does."""
    needed, todo = set(), list(entry_modules)
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        path = folder / f"{name}.py"
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: the model code needs {name}.py, which is missing")
        needed.add(name)
        todo += re.findall(r"^\s*from \.(\w+) import", path.read_text(encoding="utf-8"), re.MULTILINE)
    return sorted(f"{name}.py" for name in needed)


# "module.Class", or "org/repo--module.Class" as the Hub rewrites it: a module of the folder, by a plain name
AUTO_MAP_TARGET = re.compile(r"(?:[\w.-]+/[\w.-]+--)?(?P<module>[A-Za-z_]\w*)\.[A-Za-z_]\w*")


def _auto_map_modules(configs: dict[str, dict]) -> set[str]:
    """The modules named by the configs' `auto_map` entries; an entry that names anything but a plain module of the
    folder (a path, a package, a file elsewhere on the machine) is refused, so that no other code goes out."""
    modules = set()
    for config_name, config in configs.items():
        for key, value in (config.get("auto_map") or {}).items():
            for target in (value if isinstance(value, list) else [value]):
                if target is None:  # a tokenizer's auto_map leaves its slow class out
                    continue
                match = AUTO_MAP_TARGET.fullmatch(str(target))
                if match is None:
                    raise ValueError(f"{config_name}: auto_map[{key!r}] is {target!r}; model code must be named as "
                                     f"module.Class, a .py module inside the checkpoint folder (no path, no "
                                     f"package); push uploads no other code")
                modules.add(match.group("module"))
    return modules


def _refuse_unless_regular(model_dir: Path, name: str) -> Path:
    """The path of `name` in the folder, refused if it or a folder on the way is a symlink or not a regular file."""
    path = model_dir / name
    for part in [*reversed(Path(name).parents[:-1]), Path(name)]:
        if (model_dir / part).is_symlink():
            raise ValueError(f"{model_dir / part} is a symbolic link (to {(model_dir / part).resolve()}); push "
                             f"uploads only regular files inside the checkpoint folder and never follows links")
    status = path.stat()
    if not stat.S_ISREG(status.st_mode):
        raise ValueError(f"{path} is not a regular file; push uploads only regular files")
    if status.st_nlink > 1:
        raise ValueError(f"{path} is hard-linked ({status.st_nlink} names for one file), so its content may be a "
                         f"file's outside the checkpoint folder; push uploads only files of their own: replace it "
                         f"with a copy (cp --remove-destination)")
    return path


def _check_content(path: Path) -> dict | None:
    """Each file is what its name says, so that nothing else (a pickle renamed, a stray file) goes out under it.
    -> the object a JSON file holds."""
    name = path.name.lower()
    try:
        if name.endswith(".json"):
            values = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(values, dict):
                raise ValueError("not a JSON object")
            return values
        elif name.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(str(path), framework="pt"):
                pass
        elif name.endswith(".png"):
            from PIL import Image

            with Image.open(path) as image:
                if image.format != "PNG":
                    raise ValueError(f"a {image.format} image, not a PNG")
                image.verify()
        else:  # the card, the chat template and the model code are UTF-8 text
            path.read_text(encoding="utf-8")
    except Exception as error:  # noqa: BLE001 - every reader's own error says what is wrong; name the file
        raise ValueError(f"{path} is not a valid {path.suffix or name} file ({error}); refusing to upload it") from None
    return None


def files_to_upload(model_dir: str | Path) -> list[str]:
    """The folder's files that belong on the Hub, as sorted relative paths (see the module docstring)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir} is not a checkpoint folder")
    pickles = sorted(p.name for p in model_dir.iterdir() if p.name.lower().endswith(PICKLE_SUFFIXES))
    if pickles:
        raise ValueError(f"{model_dir} holds pickled files {pickles}; only safetensors weights are published. "
                         f"Re-save the model with save_pretrained (safetensors) and remove them.")
    names = [p.name for p in sorted(model_dir.iterdir())
             if p.name in CONFIG_FILES or p.name in TEXT_FILES or WEIGHTS.fullmatch(p.name)]
    if (model_dir / FIGURES).is_dir():  # a linked folder is listed here and refused below
        names += [f"{FIGURES}/{p.name}" for p in sorted((model_dir / FIGURES).iterdir()) if p.suffix.lower() == ".png"]
    contents = {name: _check_content(_refuse_unless_regular(model_dir, name)) for name in names}
    check_model_folder(model_dir, load_weights=True)  # after the files' own checks: loading follows no link
    configs = {name: values for name, values in contents.items() if name.endswith("config.json")}
    for name in code_closure(model_dir, _auto_map_modules(configs)):
        _check_content(_refuse_unless_regular(model_dir, name))
        names.append(name)
    if not any(WEIGHTS.fullmatch(name) for name in names):  # e.g. an index that names no shard
        raise FileNotFoundError(f"{model_dir} has no .safetensors weights to publish.")
    return sorted(names)


def push(model_dir: str | Path, repo_id: str, revision: str | None = None, private: bool = False,
         dry_run: bool = False, stage: str | Path | None = None, api: HfApi | None = None,
         commit_message: str | None = None) -> list[str]:
    """Create the repo (and the `revision` branch) if needed and upload the files in one commit; return their paths.
    The list is printed before anything is sent. `dry_run`: send nothing; `stage`: also copy the exact upload into
    that folder."""
    model_dir = Path(model_dir)
    files = files_to_upload(model_dir)
    if "README.md" in files:
        card = (model_dir / "README.md").read_text(encoding="utf-8")
        local = sorted({str(p) for p in (model_dir.absolute(), model_dir.resolve()) if str(p) in card})
        if local:
            raise ValueError(f"{model_dir / 'README.md'} names the local folder {local[0]}, which would be published; "
                             f"write the card for the repository: python -m gatedgpt2.hub_cards card {model_dir} "
                             f"--repo {repo_id}")
    if stage is not None:
        stage = Path(stage)
        for name in files:
            (stage / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(model_dir / name, stage / name, follow_symlinks=False)
    if dry_run:
        return files
    print(f"Uploading {len(files)} files of {model_dir} to {repo_id}@{revision or 'main'}: {', '.join(files)}",
          flush=True)
    api = api or HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    api.create_commit(
        repo_id,
        operations=[CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(model_dir / name)) for name in files],
        commit_message=commit_message or f"Upload {model_dir.name}" + (f" ({revision})" if revision else ""),
        revision=revision, repo_type="model",
    )
    return files


def push_with_revisions(model_dir: str | Path, repo_id: str, private: bool = False, api: HfApi | None = None,
                        dry_run: bool = False) -> dict[str, list[str]]:
    """The checkpoint to `main` and each words-seen revision (`revisions/chck_*M`) to the branch of its name."""
    model_dir = Path(model_dir)
    pushed = {"main": push(model_dir, repo_id, private=private, dry_run=dry_run, api=api)}
    for _, folder in RunFiles(model_dir).revisions():
        pushed[folder.name] = push(folder, repo_id, revision=folder.name, private=private, dry_run=dry_run, api=api)
    return pushed
