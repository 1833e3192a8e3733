"""The README opens with the two commands, and CI runs exactly the second one."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```sh\n(.+?)\n```", text)[:2]


def test_readme_opens_with_generate_then_tests() -> None:
    """The first command runs `imagegate generate`, the second the test suite."""
    generate, tests = readme_commands()
    assert "imagegate generate" in generate
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run contains the README's test command verbatim."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert readme_commands()[1] in ci.splitlines()


def test_ci_builds_the_site_strictly_after_the_tests() -> None:
    """.ci/run runs `mkdocs build --strict` after the README's test command."""
    lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    tests = lines.index(readme_commands()[1])
    build = next(i for i, line in enumerate(lines) if "mkdocs build --strict" in line)
    assert build > tests


def test_readme_refers_to_nothing_outside_the_repository() -> None:
    """No path leaves the repository, and every relative link names a file in it or a page
    the docs hooks generate."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "../" not in text
    generated = {"docs/reference/configuration.md", "docs/reference/cli.md"}
    for target in re.findall(r"\]\((?!https?://|#)([^)]+)\)", text):
        assert (ROOT / target).exists() or target in generated, target


def test_readme_links_the_documentation_site() -> None:
    """The README points at the site's configuration reference and recipes."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "](docs/reference/configuration.md)" in text
    assert "](docs/recipes/switching.md)" in text
