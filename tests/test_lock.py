"""The test environment is exactly requirements.lock, and the lock is what setup.cfg allows."""

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.utils import canonicalize_name

from tests.canary import pins, setup_requirements

ROOT = Path(__file__).parents[1]


def locked() -> dict[str, str]:
    return pins((ROOT / "requirements.lock").read_text())


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
    locked_pins = locked()
    assert "torch" not in locked_pins  # the build is chosen by `make ... TORCH=...`; its own dependencies are locked
    assert len(locked_pins) > 50  # direct and transitive
    for requirement in setup_requirements():
        name = canonicalize_name(requirement.name)
        if name == "torch":
            continue
        assert name in locked_pins, f"{name} is in setup.cfg but not locked"
        assert requirement.specifier.contains(locked_pins[name], prereleases=True), \
            f"{name}=={locked_pins[name]} breaks {requirement}"
