"""The test environment is exactly requirements.lock, and the lock is what setup.cfg allows."""

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).parents[1]


def locked() -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9._-]+)==(\S+)$", (ROOT / "requirements.lock").read_text(), re.MULTILINE)
    return {canonicalize_name(name): pinned for name, pinned in pins}


def test_every_locked_package_is_installed_at_its_locked_version():
    wrong = {}
    for name, pinned in locked().items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = None
        if installed != pinned:
            wrong[name] = (pinned, installed)
    assert not wrong, f"installed versions differ from requirements.lock (locked, installed): {wrong}"


def test_the_lock_satisfies_setup_cfg_and_leaves_torch_to_the_torch_choice():
    pins = locked()
    assert "torch" not in pins  # the build is chosen by `make ... TORCH=...`; its own dependencies are locked
    assert len(pins) > 50  # direct and transitive
    setup = (ROOT / "setup.cfg").read_text()
    requirements = re.findall(r"^    ([a-z][a-z0-9-]*[<>=!].*)$", setup, re.MULTILINE)
    assert requirements
    for line in requirements:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if name == "torch":
            continue
        assert name in pins, f"{name} is in setup.cfg but not locked"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} breaks {line}"
