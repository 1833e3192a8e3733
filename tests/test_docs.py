"""The documentation site: it builds strictly, its generated pages cover the code, and the
HTTP API pages' examples run against a live server."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from serverkit import Fake, fake_settings, live

from imagegate.cli import build_parser
from imagegate.config_keys import model_keys, reference_markdown
from imagegate.registry import provider_types

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
API_PAGES = ["openai", "a1111", "jobs", "images", "providers", "health", "metrics"]
"""In this order: the first ones make the images the later ones read."""


def load_hooks() -> ModuleType:
    """docs/hooks.py, the MkDocs hook that generates the reference pages."""
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def code_blocks(page: Path, language: str) -> list[str]:
    """The fenced blocks of ``language`` in a Markdown page."""
    return re.findall(rf"^```{language}\n(.*?)^```$", page.read_text(encoding="utf-8"), re.M | re.S)


def test_site_builds_strictly(tmp_path: Path) -> None:
    """`mkdocs build --strict` succeeds: no broken link, no missing page, no warning."""
    run = subprocess.run(
        [str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "-d", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert run.returncode == 0, run.stderr
    assert "WARNING" not in run.stderr
    for page in ("reference/configuration", "reference/cli", "api/openapi", "recipes/switching"):
        assert (tmp_path / page / "index.html").is_file()
    assert (tmp_path / "api" / "openapi.json").is_file()


def test_generated_configuration_page_has_every_provider_types_keys() -> None:
    """The page the hook writes is the reference, with a row per key of every provider type."""
    page = load_hooks().pages()["reference/configuration.md"]
    assert page == reference_markdown()
    for name, kind in provider_types().items():
        section = page.split(f"### `{name}`\n", 1)[1].split("\n### ", 1)[0]
        assert all(f"| `{key.name}` |" in section for key in model_keys(kind.cls.Config))


def test_cli_page_has_every_command_and_option() -> None:
    """The CLI reference has a section per command, with each of its options."""
    page = load_hooks().pages()["reference/cli.md"]
    for name, parser in load_hooks()._commands(build_parser()):
        assert f"## `{name}`" in page
        for action in parser._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}" in page or f", {flag}" in page, (name, flag)
    assert "## `imagegate config show`" in page
    assert "## `imagegate config check`" in page


def test_every_cli_argument_has_help() -> None:
    """Every command and argument of the parser says what it does, for the CLI reference."""
    missing = [
        f"{name} {action.dest}"
        for name, parser in load_hooks()._commands(build_parser())
        for action in parser._actions
        if not action.help and not isinstance(action, argparse._SubParsersAction)
    ]
    assert missing == []


def test_openapi_page_lists_every_operation() -> None:
    """Every route of the server's schema is on the OpenAPI page."""
    hooks = load_hooks()
    page = hooks.pages()["api/openapi.md"]
    for path, ops in hooks.openapi_schema()["paths"].items():
        for method in ops:
            assert f"`{method.upper()} {path}`" in page


def test_home_page_is_the_readme_with_site_links() -> None:
    """The home page is README.md; its docs/ links point at site pages."""
    page = load_hooks().pages()["index.md"]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert page.splitlines()[:6] == readme.splitlines()[:6]
    assert "](recipes/switching.md)" in page
    assert "](docs/" not in page


def test_network_troubleshooting_is_worded_by_the_doctor() -> None:
    """The connection-failure page carries the doctor's own cause and fix for each case."""
    page = load_hooks().pages()["troubleshooting/network.md"]
    rows = [line for line in page.splitlines() if line.startswith("| ") and "`" in line]
    assert [row.split(" | ")[1] for row in rows] == ["`dns`"] * 2 + ["`connect`"] * 3 + [
        "`tls`"
    ] * 2
    assert "did not finish in 2.0 s although TCP connected in 31 ms" in page
    assert "nothing listens on HOST:443" in page


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A live imagegate server on 127.0.0.1 with one fake provider, ``local``, and its own
    data dir (a module fixture starts before the per-test isolated environment)."""
    settings = fake_settings(["local"])
    gateway = settings.gateway.model_copy(update={"data_dir": tmp_path_factory.mktemp("data")})
    settings = settings.model_copy(update={"gateway": gateway})
    with live(settings, providers={"local": Fake("local")}) as running:
        yield running.url


def localize(code: str, url: str) -> str:
    """Point an example written for 127.0.0.1:8000 at the live server."""
    port = url.rsplit(":", 1)[1]
    return code.replace("http://127.0.0.1:8000", url).replace("port=8000", f"port={port}")


@pytest.mark.parametrize("page", API_PAGES)
def test_api_page_examples_run_against_a_live_server(
    page: str, server: str, tmp_path: Path
) -> None:
    """Every curl and Python example of the page exits 0 against the live server."""
    path = DOCS / "api" / f"{page}.md"
    shell, python = code_blocks(path, "sh"), code_blocks(path, "python")
    assert shell, f"{path} has no curl example"
    for block in shell:
        run = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", localize(block, server)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert run.returncode == 0, f"{block}\n{run.stdout}\n{run.stderr}"
        assert run.stdout.strip(), block
    for block in python:
        run = subprocess.run(
            [sys.executable, "-c", localize(block, server)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert run.returncode == 0, f"{block}\n{run.stdout}\n{run.stderr}"
