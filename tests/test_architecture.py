"""The layers depend one way: modeling_gatedgpt <- data <- {trainer, eval} <- pipeline (with hub_cards beside it).
Every import of every module counts, function-local ones included, so a cycle cannot hide inside a function."""

import ast
import configparser
import importlib
import importlib.util
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
    return [(package, path) for package in ALLOWED for path in sorted((ROOT / package).rglob("*.py"))]


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
    assert {p if p == "modeling_gatedgpt" else p.split(".")[1] for p in packages} == set(ALLOWED)
    folders = {str(init.parent.relative_to(ROOT)).replace("/", ".") for layer in ALLOWED
               for init in (ROOT / layer).rglob("__init__.py")}
    installed = {p if p == "modeling_gatedgpt" else p.removeprefix("gatedgpt2.") for p in packages}
    assert installed == folders, f"setup.cfg's packages are not the tree's: {sorted(installed ^ folders)}"


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


def module_imports(folder: str) -> dict[str, set[str]]:
    """{module: the modules of the same folder it imports}, relative and absolute imports alike, anywhere in it
    (function-local and TYPE_CHECKING imports too: a cycle there is still two modules that need each other). A
    sub-package counts as one module of its folder."""
    here = ROOT / folder
    modules = {path.stem for path in here.glob("*.py")} | {p.parent.name for p in here.glob("*/__init__.py")}
    dotted = folder.replace("/", ".")
    absolute = dotted if dotted.startswith("modeling_gatedgpt") else f"gatedgpt2.{dotted}"
    graph = {}
    for path in [*here.glob("*.py"), *here.glob("*/*.py")]:
        name = path.stem if path.parent == here else path.parent.name
        level = 1 if path.parent == here else 2  # the relative level that reaches this folder
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level == level:
                    targets = [base] if base else [alias.name for alias in node.names]
                elif node.level == 0 and base.startswith(absolute + "."):
                    targets = [base.removeprefix(absolute + ".")]
                elif node.level == 0 and base == absolute:
                    targets = [alias.name for alias in node.names]
                else:
                    continue
                found |= {t.split(".")[0] for t in targets if t.split(".")[0] in modules}
        graph[name] = graph.get(name, set()) | (found - {name})
    return graph


def cycle_in(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}

    def visit(node, chain):
        if state.get(node) == "open":
            return [*chain[chain.index(node):], node]
        if node in state:
            return None
        state[node] = "open"
        for dependency in sorted(graph[node]):
            found = visit(dependency, [*chain, node])
            if found:
                return found
        state[node] = "done"
        return None

    return next((c for node in sorted(graph) if (c := visit(node, [])) is not None), None)


FOLDERS = sorted({str(init.parent.relative_to(ROOT)) for layer in ALLOWED
                  for init in (ROOT / layer).rglob("__init__.py")})


@pytest.mark.parametrize("folder", FOLDERS)
def test_no_import_cycle_inside_a_package(folder):
    cycle = cycle_in(module_imports(folder))
    assert cycle is None, f"{folder}/: modules import each other: {' -> '.join(cycle)}"


def test_the_cycle_check_sees_a_cycle():
    assert cycle_in({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert cycle_in({"a": {"b"}, "b": set()}) is None


def imported_test_modules(path: Path) -> list[str]:
    """The modules under tests/ that a module imports, other than the shared helpers (tests.helpers)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" if node.module == "tests" else node.module for alias in node.names]
        else:
            continue
        found += [n for n in names if (n == "tests" or n.startswith("tests.")) and not n.startswith("tests.helpers")]
    return found


def test_only_the_shared_helpers_are_imported_across_modules():
    """bench/, experiments/ and every test import what they share from tests/helpers/, never a test module (or
    conftest, whose fixtures pytest injects); tests/canary.py is a command, imported by nothing."""
    importers = {str(path.relative_to(ROOT)): imported for path in sorted(ROOT.rglob("*.py"))
                 if ".venv" not in path.parts and "fixtures" not in path.parts and "outputs" not in path.parts
                 and (imported := imported_test_modules(path))}
    assert not importers, f"import shared test code from tests.helpers instead: {importers}"


def test_the_helper_check_sees_a_test_module_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("from tests.conftest import x\nfrom tests import test_a\nfrom tests.helpers.models import y\n"
                      "import tests.test_b\n")
    assert imported_test_modules(module) == ["tests.conftest", "tests.test_a", "tests.test_b"]


def unresolved_imports(folder: str) -> list[str]:
    """Our imports in a layer's modules (function-local ones too, which a plain import of the module never runs) whose
    module or name does not exist: a moved module leaves them behind."""
    package = "modeling_gatedgpt" if folder == "modeling_gatedgpt" else f"gatedgpt2.{folder}"
    broken = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
        here = ".".join([package, *parts[:-1]])  # the package the module is in (or is, for __init__)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
                target = f"{base}.{node.module}" if node.module else base
            elif node.module and node.module.split(".")[0] in ("gatedgpt2", "modeling_gatedgpt"):
                target = node.module
            else:
                continue
            try:
                module = importlib.import_module(target)
            except ImportError as error:
                broken.append(f"{path.relative_to(ROOT)}:{node.lineno}: {target} ({error})")
                continue
            for alias in node.names:
                if not hasattr(module, alias.name) and importlib.util.find_spec(f"{target}.{alias.name}") is None:
                    broken.append(f"{path.relative_to(ROOT)}:{node.lineno}: {alias.name} from {target}")
    return broken


@pytest.mark.parametrize("folder", list(ALLOWED))
def test_every_import_of_ours_resolves(folder):
    assert not unresolved_imports(folder), unresolved_imports(folder)
