"""The tree passes ruff with the project's rules (ruff.toml: pyflakes, pycodestyle at 120 columns, import order)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, (f"ruff check (fix with `ruff check --fix`, then by hand):\n"
                                    f"{result.stdout}{result.stderr}")
