"""The documentation stays true to the tree: the README's Architecture map names every module, and every relative
link in every Markdown file of the repository points at a file or folder that exists (and, with a #fragment into a
Markdown file, at one of its headings)."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("modeling_gatedgpt", "data", "trainer", "eval", "pipeline", "hub_cards")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def markdown_files() -> list[Path]:
    """The repository's Markdown files that git tracks or would track (not outputs/, caches or the venv)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.md"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / name for name in listed if (ROOT / name).is_file()]


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            for heading in re.findall(r"^#+ (.*)$", re.sub(r"```.*?```", "", markdown, flags=re.S), re.M)}


def broken_links(path: Path) -> list[str]:
    text = path.read_text()
    broken = []
    for target in LINK.findall(re.sub(r"```.*?```", "", text, flags=re.S)):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        file, _, fragment = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists():
            broken.append(f"{target} (no {resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else resolved})")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved.read_text()):
            broken.append(f"{target} (no heading #{fragment} in {resolved.name})")
    return broken


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    assert not broken_links(path), f"{path.relative_to(ROOT)}: broken links {broken_links(path)}"


def test_the_link_check_sees_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("# A heading\n")
    page.write_text("[ok](there.md) [ok](there.md#a-heading) [web](https://x.org/y) [bad](missing.md) "
                    "[bad anchor](there.md#nope)\n```\n[in code](ignored.md)\n```\n")
    assert [b.split(" ")[0] for b in broken_links(page)] == ["missing.md", "there.md#nope"]


def test_the_architecture_map_names_every_module():
    readme = ROOT / "README.md"
    section = readme.read_text().split("## Architecture", 1)[1]
    modules = [module for package in PACKAGES for module in sorted((ROOT / package).rglob("*.py"))]
    missing = [str(m.relative_to(ROOT)) for m in modules if m.name != "__init__.py" and m.name not in section]
    assert not missing, f"README.md's Architecture map does not name {missing}"


def test_the_readme_is_an_entry_point():
    readme = (ROOT / "README.md").read_text()
    headings = re.findall(r"^## (.*)$", re.sub(r"```.*?```", "", readme, flags=re.S), re.M)
    assert headings == ["Two commands", "Use", "Use from the Hub", "Train", "Evaluate (BabyLM 2025)", "Publish",
                        "Architecture"]
    assert len(readme.splitlines()) <= 300
