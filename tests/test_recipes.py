"""The recipes' configuration files: each page includes them, each parses, and the doctor passes
on each with its providers pointed at the loopback fakes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from conformance import CANARY
from faults import serve_app
from serverkit import IMAGEGATE
from vendor_a1111 import A1111Fake
from vendor_comfyui import ComfyUIFake
from vendor_gradio import FakeHub, gradio_app
from vendor_novita import NovitaFake
from vendor_openai import OpenAIFake
from vendor_stability import StabilityFake

from imagegate.config import load_config

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "docs" / "recipes"
CONFIGS = sorted((RECIPES / "configs").glob("*.toml"))
CONFIGS_BY_NAME = {path.stem: path for path in CONFIGS}
SNIPPET = re.compile(r'--8<-- "(docs/recipes/configs/[\w.-]+\.toml)"')
KEYS = ("HF_TOKEN", "NOVITA_API_KEY", "STABILITY_API_KEY", "OPENAI_API_KEY")


def test_every_recipe_config_is_shown_on_a_page_and_every_included_file_exists() -> None:
    """Each file in docs/recipes/configs is included by a recipe, and each include exists."""
    included = {
        match
        for page in RECIPES.glob("*.md")
        for match in SNIPPET.findall(page.read_text(encoding="utf-8"))
    }
    assert {str(path.relative_to(ROOT)) for path in CONFIGS} == included


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: path.stem)
def test_recipe_config_parses_as_written(config: Path) -> None:
    """The file as the page shows it loads: its route names configured providers."""
    settings = load_config(config)
    assert set(settings.gateway.route) <= set(settings.providers)


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, str]]:
    """One loopback fake per provider type the recipes use: type (and "hub") -> its URL."""
    with ExitStack() as stack:
        app = gradio_app()
        hub = stack.enter_context(FakeHub(host=app.url))
        novita = stack.enter_context(NovitaFake(key=CANARY))
        stability = stack.enter_context(StabilityFake(key=CANARY))
        comfy = stack.enter_context(ComfyUIFake())
        yield {
            "gradio": app.url,
            "hub": hub.url,
            "novita": novita.url,
            "stability": stability.url,
            "comfyui": comfy.url,
            "openai": stack.enter_context(serve_app(OpenAIFake(key=CANARY).app())) + "/v1",
            "a1111": stack.enter_context(serve_app(A1111Fake().app())),
        }


def at_fakes(raw: dict[str, Any], fakes: dict[str, str], tiny_model: Path) -> dict[str, Any]:
    """The recipe's config with each provider pointed at its fake (nothing else changed)."""
    for cfg in raw.get("providers", {}).values():
        kind = cfg["type"]
        if kind == "gradio":  # the Hub says where the Space runs; url names that host
            cfg["hub_url"] = fakes["hub"]
            cfg["url"] = fakes["gradio"]
        elif kind == "diffusers":
            cfg["model"] = str(tiny_model)
        else:
            cfg["url"] = fakes[kind]
    return raw


def to_toml(raw: dict[str, Any]) -> str:
    """Tables of scalars and lists of strings, as TOML (JSON's literals are TOML's here)."""
    lines: list[str] = []

    def table(name: str, body: dict[str, Any]) -> None:
        nested = {k: v for k, v in body.items() if isinstance(v, dict)}
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {json.dumps(v)}" for k, v in body.items() if k not in nested)
        for key, value in nested.items():
            table(f"{name}.{key}", value)

    for name, body in raw.items():
        table(name, body)
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: path.stem)
def test_doctor_passes_on_the_recipe_against_loopback_fakes(
    config: Path, fakes: dict[str, str], tiny_model: Path, isolated_env: Path
) -> None:
    """`imagegate doctor --json` on the recipe's config (pointed at fakes) finds all healthy."""
    raw = at_fakes(tomllib.loads(config.read_text(encoding="utf-8")), fakes, tiny_model)
    (isolated_env / "imagegate.toml").write_text(to_toml(raw), encoding="utf-8")
    run = subprocess.run(
        [IMAGEGATE, "doctor", "--json"],
        cwd=isolated_env,
        env={**os.environ, **dict.fromkeys(KEYS, CANARY), "NO_PROXY": "127.0.0.1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    report = json.loads(run.stdout)
    failed = {p["name"]: (p["cause"], p["fix"]) for p in report["providers"] if not p["ok"]}
    assert failed == {}
    assert run.returncode == 0, run.stderr
    assert {p["name"] for p in report["providers"]} == set(raw["providers"])


def normalized(text: str) -> list[str]:
    """The stage, cause and fix lines of a doctor report, with ports and times made N."""
    keep = [line.strip() for line in text.splitlines() if re.match(r"\s+(ok|FAIL|cause|fix)", line)]
    return [re.sub(r"\b\d+(?= ms)|(?<=127\.0\.0\.1:)\d+", "N", line) for line in keep]


def test_tls_recipe_shows_what_the_doctor_prints_for_a_stalled_handshake(
    fakes: dict[str, str], tiny_model: Path, isolated_env: Path, tls_stall: str
) -> None:
    """The recipe's config, its Space stalling in the handshake: the doctor's report is the
    one the page shows (hosts, ports and times aside)."""
    raw = at_fakes(tomllib.loads((CONFIGS_BY_NAME["gradio-tls"]).read_text()), fakes, tiny_model)
    raw["providers"]["space"]["url"] = tls_stall
    (isolated_env / "imagegate.toml").write_text(to_toml(raw), encoding="utf-8")
    run = subprocess.run(
        [IMAGEGATE, "doctor", "space"],
        cwd=isolated_env,
        env={**os.environ, **dict.fromkeys(KEYS, CANARY), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 3, run.stderr
    page = (RECIPES / "gradio-tls.md").read_text(encoding="utf-8")
    shown = page.split("space (gradio): FAIL at tls", 1)[1].split("```", 1)[0]
    assert normalized(run.stdout) == normalized(shown)
