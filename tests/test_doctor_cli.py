"""`imagegate doctor` as a user runs it: a subprocess, on consoles that cannot show much."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conformance import CANARY, CANARY_ENV
from faults import serve_app
from serverkit import IMAGEGATE
from vendor_openai import OpenAIFake


def doctor(*args: str, cwd: Path, encoding: str) -> subprocess.CompletedProcess[str]:
    """Run `imagegate doctor ARGS` with the canary key set and the given console encoding."""
    env = {**os.environ, "PYTHONIOENCODING": encoding, CANARY_ENV: CANARY, "COLUMNS": "120"}
    return subprocess.run(
        [IMAGEGATE, "doctor", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        encoding=encoding,
        errors="strict",
        timeout=60,
        check=False,
    )


def write_config(folder: Path, url: str) -> None:
    """./imagegate.toml with one openai provider at ``url`` reading the canary key."""
    (folder / "imagegate.toml").write_text(
        '[gateway]\nroute = ["oai"]\n\n'
        f'[providers.oai]\ntype = "openai"\nurl = "{url}/v1"\napi_key_env = "{CANARY_ENV}"\n'
        "connect_timeout_s = 0.5\ntls_timeout_s = 0.5\ntimeout_s = 1\n",
        encoding="utf-8",
    )


@pytest.fixture
def refused_config(isolated_env: Path, refused: str) -> Path:
    """A config whose only provider's port refuses connections."""
    write_config(isolated_env, refused)
    return isolated_env


@pytest.fixture
def healthy_config(isolated_env: Path) -> Iterator[Path]:
    """A config whose only provider is a working OpenAI fake that wants the canary key."""
    with serve_app(OpenAIFake(key=CANARY).app()) as base:
        write_config(isolated_env, base)
        yield isolated_env


@pytest.mark.parametrize("encoding", ["cp1252", "ascii"])
def test_json_is_valid_and_exit_is_3_for_a_refused_provider(
    refused_config: Path, encoding: str
) -> None:
    """--json on a cp1252 or ascii console prints one JSON document and exits 3."""
    run = doctor("--json", cwd=refused_config, encoding=encoding)
    assert run.returncode == 3, run.stderr
    document = json.loads(run.stdout)
    assert document["ok"] is False
    (row,) = document["providers"]
    assert (row["name"], row["ok"]) == ("oai", False)
    assert row["stages"][-1]["name"] == "connect"
    assert "refused" in row["cause"]
    assert CANARY not in run.stdout + run.stderr


@pytest.mark.parametrize("encoding", ["cp1252", "ascii"])
def test_text_report_prints_on_a_narrow_console(refused_config: Path, encoding: str) -> None:
    """Without --json the report prints on a cp1252 or ascii console, naming cause and fix."""
    run = doctor(cwd=refused_config, encoding=encoding)
    assert run.returncode == 3, run.stderr
    assert "oai (openai): FAIL at connect" in run.stdout
    assert "cause: nothing listens on 127.0.0.1:" in run.stdout
    assert "fix:" in run.stdout
    assert CANARY not in run.stdout + run.stderr


def test_exit_is_0_when_every_provider_is_healthy(healthy_config: Path) -> None:
    """A working provider passes every stage and the doctor exits 0."""
    run = doctor("--json", cwd=healthy_config, encoding="ascii")
    assert run.returncode == 0, run.stdout + run.stderr
    document = json.loads(run.stdout)
    assert document["ok"] is True
    assert [s["name"] for s in document["providers"][0]["stages"]] == [
        "config",
        "dns",
        "connect",
        "http",
        "auth",
        "api",
    ]


def test_unknown_provider_name_exits_2(refused_config: Path) -> None:
    """Naming a provider that is not configured is a usage error: exit 2, one line."""
    run = doctor("nope", cwd=refused_config, encoding="ascii")
    assert run.returncode == 2
    assert "'nope' is not a configured provider" in run.stderr
    assert run.stdout == ""
