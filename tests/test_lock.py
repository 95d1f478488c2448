"""The test environment is exactly requirements.lock, and the lock is what setup.cfg allows."""

from importlib.metadata import PackageNotFoundError, version

from packaging.utils import canonicalize_name

from tests.helpers.lock import locked_pins, setup_requirements


def test_every_locked_package_is_installed_at_its_locked_version():
    wrong = {}
    for name, pinned in locked_pins().items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = None
        if installed != pinned:
            wrong[name] = (pinned, installed)
    assert not wrong, f"installed versions differ from requirements.lock (locked, installed): {wrong}"


def test_the_lock_satisfies_setup_cfg_and_leaves_torch_to_the_torch_choice():
    pins = locked_pins()
    assert "torch" not in pins  # the build is chosen by `make ... TORCH=...`; its own dependencies are locked
    assert len(pins) > 50  # direct and transitive
    for requirement in setup_requirements():
        name = canonicalize_name(requirement.name)
        if name == "torch":
            continue
        assert name in pins, f"{name} is in setup.cfg but not locked"
        assert requirement.specifier.contains(pins[name], prereleases=True), \
            f"{name}=={pins[name]} breaks {requirement}"
