"""The layers depend one way: modeling_gatedgpt <- data <- {trainer, eval} <- pipeline (with hub_cards beside it).
Every import of every module counts, function-local ones included, so a cycle cannot hide inside a function."""

import ast
import configparser
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package (its folder) -> the packages it may import; a package may always import its own modules
ALLOWED = {
    "modeling_gatedgpt": set(),
    "data": {"modeling_gatedgpt"},
    "trainer": {"modeling_gatedgpt", "data"},
    "eval": {"modeling_gatedgpt", "data"},
    "hub_cards": {"modeling_gatedgpt", "data"},
    "pipeline": {"modeling_gatedgpt", "data", "trainer", "eval", "hub_cards"},
}


def imported_packages(path: Path) -> set[str]:
    """Our packages a module imports anywhere in it, by folder name; a bare `trainer`, `eval`, ... (not installed,
    only importable from the repository root) counts as itself too, so that it fails the check below."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "gatedgpt2" and len(parts) > 1:
                found.add(parts[1])
            elif parts[0] in ALLOWED:
                found.add(f"bare {parts[0]}" if parts[0] != "modeling_gatedgpt" else parts[0])
    return found


def modules():
    return [(package, path) for package in ALLOWED for path in sorted((ROOT / package).glob("*.py"))]


@pytest.mark.parametrize("package,path", modules(), ids=[str(path.relative_to(ROOT)) for _, path in modules()])
def test_imports_go_one_way(package, path):
    imported = imported_packages(path)
    if package != "modeling_gatedgpt":  # the remote code reaches its own modules only through `from .x import y`
        imported.discard(package)
    assert imported <= ALLOWED[package], (
        f"{path.relative_to(ROOT)} imports {sorted(imported - ALLOWED[package])}; {package} may import only "
        f"{sorted(ALLOWED[package]) or 'nothing of ours'}")


def test_the_allowed_imports_have_no_cycle():
    order, state = [], {}

    def visit(package, chain):
        assert state.get(package) != "open", f"import cycle: {' -> '.join([*chain, package])}"
        if package not in state:
            state[package] = "open"
            for dependency in ALLOWED[package]:
                visit(dependency, [*chain, package])
            state[package] = "done"
            order.append(package)

    for package in ALLOWED:
        visit(package, [])
    assert order[0] == "modeling_gatedgpt" and order[-1] == "pipeline"


def test_the_check_sees_function_local_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from gatedgpt2.eval.checkpoint import load_checkpoint\n    import trainer.data\n")
    assert imported_packages(module) == {"eval", "bare trainer"}


def test_installed_import_names_are_namespaced():
    """Only `modeling_gatedgpt` and the `gatedgpt2` namespace are installed: no top-level `data`, `eval`, ... that
    could shadow a user's own, and every layer's folder is installed."""
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    packages = setup["options"]["packages"].split()
    assert {p.split(".")[0] for p in packages} == {"modeling_gatedgpt", "gatedgpt2"}
    assert {p.split(".")[-1] for p in packages} == set(ALLOWED)


# A run's folder layout is spelled once, in data/run_files.py (`RunFiles`) and data/revisions.py (`revision_name`):
# a path component of it anywhere else is a second spelling that can drift from the first. File and revision names
# count wherever they appear; the folder names where they build a path (`x / "report"`, `join(x, "revisions")`,
# `glob("revisions/*")`), not as, say, a YAML key.
RUN_FILE = re.compile(r"\.?(report\.json|trainer_state\.json|chck_.*)|(.*/)?(revisions|report)(/.*)?")
RUN_FOLDER = re.compile(r"revisions|report")
PATH_CALLS = {"join", "Path", "glob", "rglob", "joinpath", "with_name"}
RUN_LAYOUT_OWNERS = {"data/run_files.py", "data/revisions.py"}


def run_layout_literals(path: Path) -> list[str]:
    """The string constants of a module that spell a component of a run's layout, with their line."""
    tree = ast.parse(path.read_text(), str(path))
    in_paths = {id(operand) for node in ast.walk(tree) if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)
                for operand in (node.left, node.right)}
    in_paths |= {id(arg) for node in ast.walk(tree) if isinstance(node, ast.Call)
                 and getattr(node.func, "attr", getattr(node.func, "id", None)) in PATH_CALLS for arg in node.args}
    name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    return [f"{name}:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and (RUN_FILE.fullmatch(node.value) and not RUN_FOLDER.fullmatch(node.value)
                 or RUN_FOLDER.fullmatch(node.value) and id(node) in in_paths)]


def test_a_runs_layout_is_spelled_only_by_its_owner():
    modules = [path for package in [*ALLOWED, "bench", "experiments"]
               for path in sorted((ROOT / package).rglob("*.py"))]
    spelled = [literal for path in modules if str(path.relative_to(ROOT)) not in RUN_LAYOUT_OWNERS
               for literal in run_layout_literals(path)]
    spelled += run_layout_literals(ROOT / "train.py")
    assert not spelled, f"spell these through gatedgpt2.data.RunFiles / revision_name: {spelled}"


def test_the_layout_check_sees_a_literal(tmp_path):
    module = tmp_path / "m.py"
    module.write_text('"""Mentions revisions/chck_* in prose."""\nx = root / "report" / "report.json"\n'
                      'y = options["revisions"], "chck_10M", os.path.join(root, "revisions")\n'
                      'z = root.glob("revisions/*")\n')
    assert sorted(line.split(": ", 1)[1] for line in run_layout_literals(module)) == [
        "'chck_10M'", "'report'", "'report.json'", "'revisions'", "'revisions/*'"]

