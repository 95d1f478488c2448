"""`make canary`: would the newest releases break us? Drift is ours to find before our users do.

1. Resolves the newest versions setup.cfg allows (uv, at run time, nothing held back) and prints what moved against
   requirements.lock.
2. Builds a scratch environment from that resolution (torch as `make` installs it) and runs the whole suite there,
   the version matrix included (its reference run is then the newest transformers).
3. If tests fail, tries each moved direct dependency alone on top of the lock, reruns the failed tests, and prints
   which package and version broke them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.utils import canonicalize_name

from tests.helpers.client_envs import FIND_LINKS, build_env, torch_requirement, uv
from tests.helpers.lock import locked_pins, pins, setup_requirements

ROOT = Path(__file__).parents[1]
EXTRAS = ["train", "test", "analysis", "qlora"]


def direct_dependencies() -> set[str]:
    return {canonicalize_name(requirement.name) for requirement in setup_requirements()}


def newest_resolution(scratch: Path) -> Path:
    constraints = scratch / "constraints.txt"
    constraints.write_text(f"{torch_requirement()}\n")
    out = scratch / "newest.lock"
    subprocess.run([uv(), "pip", "compile", "--quiet", str(ROOT / "setup.cfg"), *[f"--extra={e}" for e in EXTRAS],
                    "--python-version", f"{sys.version_info.major}.{sys.version_info.minor}", *FIND_LINKS,
                    "-c", str(constraints), "--no-emit-package", "torch", "--upgrade", "-o", str(out)], check=True)
    return out


def environment(folder: Path, requirements: list[str]) -> Path:
    """A scratch environment: torch as installed here, `requirements`, and this package (editable)."""
    python = build_env(folder, [torch_requirement(), *requirements])
    subprocess.run([uv(), "pip", "install", "--quiet", "--python", str(python), "--no-deps", "-e", str(ROOT)],
                   check=True)
    return python


def run_tests(python: Path, tests: list[str]) -> tuple[bool, list[str]]:
    """Run the tests under `python`, showing pytest's output as it comes; return whether they passed and the ids of
    the failed ones (empty when pytest failed before any test, e.g. on a collection error)."""
    process = subprocess.Popen([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf",
                                "--deselect", "tests/test_lock.py", *tests], cwd=ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env={**{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
                                    "GATEDGPT2_CANARY": "1"})
    lines = []
    for line in process.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    process.wait()
    return process.returncode == 0, re.findall(r"^(?:FAILED|ERROR) (\S+)", "".join(lines), re.MULTILINE)


def main() -> int:
    locked = locked_pins()
    with tempfile.TemporaryDirectory(prefix="gatedgpt2-canary-") as scratch:
        scratch = Path(scratch)
        newest_lock = newest_resolution(scratch)
        newest = pins(newest_lock.read_text())
        moved = {name: (locked.get(name), version) for name, version in newest.items() if locked.get(name) != version}
        print(f"{len(moved)} packages move against requirements.lock:")
        for name, (old, new) in sorted(moved.items()):
            print(f"  {name}: {old} -> {new}{'   (direct)' if name in direct_dependencies() else ''}")
        passed, failed = run_tests(environment(scratch / "newest", ["-r", str(newest_lock)]), [])
        if passed:
            print("CANARY OK: the newest releases pass the whole suite.")
            return 0
        print(f"CANARY: the suite fails with the newest releases ({len(failed)} tests); trying each moved direct "
              "dependency alone on top of the lock")
        for name, (_, version) in sorted(moved.items()):
            if name not in direct_dependencies():
                continue
            lock_without = scratch / f"lock-without-{name}.txt"
            lock_without.write_text("\n".join(f"{n}=={v}" for n, v in locked.items() if n != name) + "\n")
            python = environment(scratch / f"only-{name}", ["-r", str(lock_without), f"{name}=={version}"])
            if not run_tests(python, failed)[0]:
                print(f"CANARY: {name} {version} breaks {failed or 'the suite'}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
