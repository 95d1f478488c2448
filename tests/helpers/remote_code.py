"""Loading checkpoints as a user without this package does: through their remote code, from an offline Hub cache."""

import os
import shutil
import textwrap

# the head of a script that must load checkpoints through their remote code, as where this package is not installed


WITHOUT_THE_PACKAGE = textwrap.dedent(
    """
    import importlib.abc, sys
    class BlockPackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "modeling_gatedgpt":
                raise ImportError("the package is not installed here")
    sys.meta_path.insert(0, BlockPackage())
    """
)


def offline_hub_env(hf_home, **extra: str) -> dict[str, str]:
    """The environment of a process that loads checkpoints as an offline user would: from the Hub cache in `hf_home`
    only (no other cache location, no network) and without this repository on its PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_HUB_CACHE", "HF_MODULES_CACHE")}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **extra)
    return env


def make_offline_hub_cache(checkpoint_dir, hf_home, repo_id, commit="0123456789abcdef0123456789abcdef01234567",
                           ref="main"):
    """Lay a folder out as the Hub cache would after a download: models--org--name/{refs/<ref>, snapshots/<sha>}."""
    repo_dir = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / ref).write_text(commit)
    shutil.copytree(checkpoint_dir, repo_dir / "snapshots" / commit)
