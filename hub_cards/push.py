"""Upload a checkpoint folder to the Hub: exactly the files a user needs (safetensors weights, config with `auto_map`,
the model code, tokenizer, processor, card, figures), in one commit, to `main` or to a revision branch (the BabyLM
`chck_*M` checkpoints). Pickled weights are refused, never sent."""

from __future__ import annotations

import shutil
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi


UPLOADED = ("*.safetensors", "config.json", "generation_config.json", "*.py", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "chat_template.jinja", "processor_config.json", "preprocessor_config.json",
            "adapter_config.json", "README.md", "figures/*.png")
PICKLES = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt")


def files_to_upload(model_dir: str | Path) -> list[str]:
    """The folder's files that belong on the Hub, as sorted relative paths (checkpoints, revisions, reports, caches
    and training state stay home)."""
    model_dir = Path(model_dir)
    pickles = sorted(str(p.relative_to(model_dir)) for pattern in PICKLES for p in model_dir.glob(pattern))
    if pickles:
        raise ValueError(f"{model_dir} holds pickled files {pickles}; only safetensors weights are published. "
                         f"Re-save the model with save_pretrained (safetensors) and remove them.")
    files = sorted({str(p.relative_to(model_dir)) for pattern in UPLOADED for p in model_dir.glob(pattern)
                    if p.is_file()})
    if not any(f.endswith(".safetensors") for f in files):
        raise FileNotFoundError(f"{model_dir} has no .safetensors weights to publish.")
    if "config.json" not in files and "adapter_config.json" not in files:
        raise FileNotFoundError(f"{model_dir} has no config.json.")
    return files


def push(model_dir: str | Path, repo_id: str, revision: str | None = None, private: bool = False,
         dry_run: bool = False, stage: str | Path | None = None, api: HfApi | None = None,
         commit_message: str | None = None) -> list[str]:
    """Create the repo (and the `revision` branch) if needed and upload the files in one commit; return their paths.
    `dry_run`: send nothing; `stage`: also copy the exact upload into that folder."""
    model_dir = Path(model_dir)
    files = files_to_upload(model_dir)
    if stage is not None:
        stage = Path(stage)
        for name in files:
            (stage / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(model_dir / name, stage / name)
    if dry_run:
        return files
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
    for folder in sorted((model_dir / "revisions").glob("chck_*")):
        pushed[folder.name] = push(folder, repo_id, revision=folder.name, private=private, dry_run=dry_run, api=api)
    return pushed
