"""requirements.lock and setup.cfg, read: the exact set the tests run with and the ranges the package promises."""

import configparser
import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def pins(text: str) -> dict[str, str]:
    """{canonical package name: version} of a requirements file's `name==version` lines."""
    return {canonicalize_name(n): v for n, v in re.findall(r"^([A-Za-z0-9._-]+)==(\S+)$", text, re.MULTILINE)}

def locked_pins() -> dict[str, str]:
    return pins((ROOT / "requirements.lock").read_text())

def setup_requirements() -> list[Requirement]:
    """What setup.cfg asks for: install_requires and every extra."""
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    lines = setup["options"]["install_requires"].splitlines()
    lines += [line for extra in setup["options.extras_require"].values() for line in extra.splitlines()]
    return [Requirement(line) for line in lines if line.strip()]
