"""A saved model folder (a run's final model, a revision, a checkpoint, a LoRA adapter): what it must hold, checked
before anything of ours reads or publishes it (eval, card, push, update-code), and how a run puts its final model
in place whole.

A folder is refused, by name, when
- a save into it was cut off (`INCOMPLETE` is there: `install_model` had begun to replace its files);
- it has no configuration, no weights or no tokenizer;
- its weights are unreadable (a truncated or empty file), or do not match its config: a missing weight would be
  drawn at random and an unexpected one dropped by `from_pretrained`, with only a warning.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# Present while `install_model` replaces a folder's model files: from its first change to its last.
INCOMPLETE = ".model-save-incomplete"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors",
                "pytorch_model.bin", "pytorch_model.bin.index.json", "adapter_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
# What a save_pretrained of a model and its tokenizer writes at the top of a folder: replaced as a whole.
SAVED_FILES = ("config.json", "generation_config.json", "adapter_config.json", "model*.safetensors",
               "model.safetensors.index.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "chat_template.jinja", "processor_config.json", "preprocessor_config.json",
               "training_args.json", "README.md")


def check_model_folder(folder: str | os.PathLike, load_weights: bool = False, tokenizer: bool = True) -> Path:
    """`folder`, if it holds a complete model with its tokenizer and readable weights (see the module docstring);
    otherwise an error naming the folder, the file and what is wrong. `load_weights`: also load a GatedGPT2's weights
    to check that they match its config (`check_weights_match_config`); a caller that loads the model anyway checks
    its `check_loading_info` instead. `tokenizer`: False for a LoRA adapter's base model (the adapter brings it)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a model folder: no such directory")
    if (folder / INCOMPLETE).exists():
        raise ValueError(f"{folder} is incomplete: the save of its model was cut off ({INCOMPLETE} is there). Resume "
                         f"the run (train.py ... --resume_from_checkpoint true) to save it again, or use one of its "
                         f"checkpoint-N folders.")
    config_name = next((n for n in ("config.json", "adapter_config.json") if (folder / n).is_file()), None)
    if config_name is None:
        raise FileNotFoundError(f"{folder} has no config.json (nor adapter_config.json): not a saved model")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise FileNotFoundError(f"{folder} has no weights (expected one of {', '.join(WEIGHT_FILES)})")
    if tokenizer and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(f"{folder} has no tokenizer (expected {' or '.join(TOKENIZER_FILES)}): a model "
                                f"folder carries the tokenizer it was trained with")
    check_weights_readable(folder)
    config = _read_json_object(folder / config_name)
    if load_weights and config.get("model_type") == "gated_gpt2" and "quantization_config" not in config:
        check_weights_match_config(folder)
    return folder


def check_local_model(model: str, tokenizer: bool = True) -> None:
    """A model given as a folder must be a complete one (`check_model_folder`); a name that is a path but names no
    folder is an error, not a Hub lookup. Anything else is a Hub id, for transformers to resolve."""
    hub_id = not model.startswith(("/", ".", "~")) and model.count("/") <= 1  # "name" or "org/name"
    if Path(model).exists() or not hub_id:
        check_model_folder(Path(model).expanduser(), tokenizer=tokenizer)


def _read_json_object(path: Path) -> dict:
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"{path} is not readable JSON ({error})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} holds a JSON {type(values).__name__}, not an object")
    return values


def check_weights_readable(folder: Path) -> None:
    """Every safetensors file of the folder (the shards of an index too) opens: a truncated or empty one is an error
    naming it. Pickled weights are not opened."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(_read_json_object(index).get("weight_map", {}).values()))
    else:
        files = [n for n in ("model.safetensors", "adapter_model.safetensors") if (folder / n).is_file()]
    for name in files:
        try:
            with safe_open(str(folder / name), framework="pt") as weights:
                for key in weights.keys():
                    weights.get_slice(key)
        except Exception as error:  # noqa: BLE001 - safetensors' own error says what is wrong; name the file
            raise ValueError(f"{folder / name} is not a readable safetensors file ({error}); the save that wrote it "
                             f"did not finish or the file was damaged") from None


def check_weights_match_config(folder: Path) -> None:
    """Load the folder's GatedGPT2 with this package's classes (no checkpoint code runs) and refuse it unless every
    weight was found, none was left over and each had its shape (`check_loading_info`). Transformers' own renaming of
    older weight names applies, as it does for every user."""
    import modeling_gatedgpt

    config = modeling_gatedgpt.GatedGPT2Config.from_pretrained(folder)
    architecture = (config.architectures or ["GatedGPT2ForCausalLM"])[0]
    model_class = getattr(modeling_gatedgpt, architecture, modeling_gatedgpt.GatedGPT2ForCausalLM)
    _, info = model_class.from_pretrained(folder, output_loading_info=True)
    check_loading_info(folder, info)


def check_loading_info(folder: str | os.PathLike, info: dict) -> None:
    """`from_pretrained(..., output_loading_info=True)`'s report, as an error naming the keys if any weight was
    missing (drawn at random), unexpected (dropped) or of another shape."""
    problems = []
    for kind, keys in (("missing", info.get("missing_keys")), ("unexpected", info.get("unexpected_keys")),
                       ("of another shape", info.get("mismatched_keys"))):
        keys = sorted(str(k if isinstance(k, str) else k[0]) for k in keys or ())
        if keys:
            problems.append(f"{kind}: {_names(keys)}")
    if problems:
        raise ValueError(f"{folder}: the weights do not match its config.json ({'; '.join(problems)}). Loading it "
                         f"would draw missing weights at random and drop the others; re-save the model, or fix "
                         f"config.json.")


def _names(names: list[str], shown: int = 8) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def install_model(staged: str | os.PathLike, folder: str | os.PathLike) -> None:
    """Make the complete model folder `staged` (inside `folder`) the model of `folder`: `INCOMPLETE` is written, the
    model files of an earlier save are deleted (so none of them mixes with the new ones), the new ones are moved in,
    and `INCOMPLETE` is removed, last. A kill in between leaves `INCOMPLETE`, which every reader refuses."""
    staged, folder = Path(staged), Path(folder)
    (folder / INCOMPLETE).write_text(f"the model files of {folder} are being replaced by those of {staged.name}\n")
    for path in saved_model_files(folder):
        path.unlink()
    for path in sorted(staged.iterdir()):
        os.replace(path, folder / path.name)
    staged.rmdir()
    (folder / INCOMPLETE).unlink()


def saved_model_files(folder: Path) -> list[Path]:
    """The files of `folder` that a save of a model writes (configs, weights, tokenizer, card, and the model code the
    package copies beside them)."""
    import modeling_gatedgpt

    code = {p.name for p in Path(modeling_gatedgpt.__file__).parent.glob("*.py") if p.name != "__init__.py"}
    found = {p for pattern in SAVED_FILES for p in folder.glob(pattern)} | {folder / n for n in code}
    return sorted(p for p in found if p.is_file() and not p.is_symlink())


def discard_cut_off_install(folder: str | os.PathLike) -> list[Path]:
    """After a kill during `install_model`: delete the folder's model files, old and new mixed, and `INCOMPLETE`;
    -> the files deleted (none if no install was cut off)."""
    folder = Path(folder)
    if not (folder / INCOMPLETE).exists():
        return []
    deleted = saved_model_files(folder)
    for path in deleted:
        path.unlink()
    (folder / INCOMPLETE).unlink()
    return deleted
