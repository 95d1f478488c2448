"""Virtual environments of other transformers releases ("clients"), built once with uv and cached between runs.

A client environment holds only what a user's environment must have to load a checkpoint through its remote code:
torch (the build installed here), one transformers release, its tokenizers, safetensors and pillow. It is keyed by
everything it is built from, so a changed requirement builds a new one; building happens in a scratch folder that is
renamed into place, so an interrupted or concurrent build never leaves a half-made environment behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

CACHE = Path(os.environ.get("GATEDGPT2_ENV_CACHE", Path.home() / ".cache" / "gatedgpt2" / "envs"))
LOCAL_WHEELS = Path("/opt/wheels")  # this project's machines keep the CPU torch build here
FIND_LINKS = ["--find-links", str(LOCAL_WHEELS)] if LOCAL_WHEELS.is_dir() else []


def torch_requirement() -> str:
    """The torch build installed here, so client and locked runs compute with the same kernels."""
    return f"torch=={torch.__version__}"


def uv() -> str:
    beside_python = Path(sys.executable).parent / "uv"
    found = str(beside_python) if beside_python.exists() else shutil.which("uv")
    if found is None:
        raise RuntimeError("uv is not installed: `make install` puts it into .venv (it is in the `test` extra)")
    return found


def build_env(folder: Path, requirements: list[str]) -> Path:
    """A new uv environment in `folder` with `requirements` (resolved by uv); its python executable."""
    python = folder / "bin" / "python"
    try:
        subprocess.run([uv(), "venv", "--quiet", "--python", sys.executable, str(folder)], check=True,
                       capture_output=True, text=True)
        subprocess.run([uv(), "pip", "install", "--quiet", "--python", str(python), *FIND_LINKS, *requirements],
                       check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as error:
        raise RuntimeError(f"building an environment in {folder} with {requirements} failed:\n{error.stderr}") \
            from error
    return python


def client_env(name: str, requirements: list[str]) -> Path:
    """The python executable of a cached environment with exactly `requirements` (resolved by uv)."""
    key_source = "\n".join([sys.version, *sorted(requirements), *FIND_LINKS])
    folder = CACHE / f"{name}-{hashlib.sha256(key_source.encode()).hexdigest()[:12]}"
    python = folder / "bin" / "python"
    if (folder / ".complete").exists():
        return python

    CACHE.mkdir(parents=True, exist_ok=True)
    scratch = CACHE / f".{folder.name}.{os.getpid()}.building"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        build_env(scratch, requirements)
        (scratch / ".complete").write_text("\n".join(requirements) + "\n")
        try:
            scratch.rename(folder)
        except OSError:  # another run built it first
            if not (folder / ".complete").exists():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return python
