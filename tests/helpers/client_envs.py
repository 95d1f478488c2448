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

from .lock import locked_pins
from .remote_code import WITHOUT_THE_PACKAGE, offline_hub_env

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


def locked_version(package: str) -> str:
    return locked_pins()[package]

# (transformers release, what else that client pins): the BabyLM 2025 pipeline's pin (with its tokenizers), the last
# 4.x, the first 5.x, the locked release, and the newest release when this list was written.


MATRIX = [
    ("4.51.3", ["tokenizers==0.21.1"]),
    ("4.57.6", []),
    ("5.0.0", []),
    (locked_version("transformers"), []),
    ("5.24.0", []),
]

def client_python(version: str, extra: list[str]) -> Path:
    return client_env(f"transformers-{version}",
                      [torch_requirement(), f"transformers=={version}", "safetensors", "pillow", *extra])

def run_client_script(python: Path, hf_home: Path, script: str, args: list[str], cwd: Path,
                      allow_package: bool = False) -> str:
    """Run `script` under `python` offline against the Hub cache in `hf_home`, unable to import this package."""
    env = offline_hub_env(hf_home, TOKENIZERS_PARALLELISM="false")
    guard = "" if allow_package else WITHOUT_THE_PACKAGE
    result = subprocess.run([str(python), "-c", "import sys\n" + guard + script, *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{python}:\n{result.stderr[-4000:]}"
    return result.stdout


PIPELINE = Path(__file__).resolve().parents[3] / "shared" / "vendor" / "babylm-evaluation-pipeline-2025"


def pipeline_python() -> Path:
    pins = [line.strip() for line in (PIPELINE / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("torch==")]
    return client_env("babylm-pipeline-2025", [torch_requirement(), *pins])
