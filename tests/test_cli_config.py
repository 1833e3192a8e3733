"""`imagegate config show` and `imagegate config check`, run through the real entry point."""

from __future__ import annotations

import json
from pathlib import Path

from test_cli import cli

CONFIG = """
[gateway]
route = ["a1", "local"]
deadline_s = 30

[providers.a1]
type = "a1111"
url = "http://127.0.0.1:9"
auth_env = "A1_AUTH"
"""


def test_show_json_gives_every_key_its_value_source_and_description(isolated_env: Path) -> None:
    """Each key has the effective value, where it came from, and its description."""
    (isolated_env / "imagegate.toml").write_text(CONFIG)
    run = cli("config", "show", "--json", cwd=isolated_env, env={"IMAGEGATE_ROUTE": "local"})
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    gateway = doc["tables"]["gateway"]
    assert gateway["deadline_s"] == {
        "value": 30.0,
        "source": "file",
        "description": gateway["deadline_s"]["description"],
    }
    assert gateway["route"]["value"] == ["local"]
    assert gateway["route"]["source"] == "environment (IMAGEGATE_ROUTE)"
    assert gateway["max_attempts"]["source"] == "default"
    assert doc["tables"]["server"]["max_queue"]["value"] == 100
    a1 = doc["providers"]["a1"]
    assert a1["steps"] == {
        "value": 20,
        "source": "default",
        "description": a1["steps"]["description"],
    }
    assert all(entry["description"] for entry in a1.values())
    assert doc["providers"]["local"]["type"]["value"] == "diffusers"


def test_show_says_whether_a_secret_is_set_and_never_prints_it(isolated_env: Path) -> None:
    """A key naming an environment variable shows "set" or "not set", never the value."""
    (isolated_env / "imagegate.toml").write_text(CONFIG)
    run = cli("config", "show", cwd=isolated_env, env={"A1_AUTH": "user:hunter2-secret"})
    assert run.returncode == 0, run.stderr
    assert 'auth_env = "A1_AUTH" (set)  # file' in run.stdout
    assert 'api_keys_env = "IMAGEGATE_API_KEYS" (not set)  # default' in run.stdout
    assert "hunter2" not in run.stdout + run.stderr


def test_show_without_a_file_prints_the_built_in_defaults(isolated_env: Path) -> None:
    """With no config file, every value is a default and the file is none."""
    run = cli("config", "show", "--json", cwd=isolated_env)
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["file"] is None
    assert {e["source"] for e in doc["tables"]["scale"].values()} == {"default"}


def test_check_accepts_a_valid_file(isolated_env: Path) -> None:
    """A valid file: exit 0 and one line with the route and providers."""
    path = isolated_env / "ok.toml"
    path.write_text(CONFIG)
    run = cli("config", "check", str(path), cwd=isolated_env)
    assert run.returncode == 0, run.stderr
    assert "ok: route a1, local; providers a1, local" in run.stdout


def test_check_exits_2_naming_the_file_and_key(isolated_env: Path) -> None:
    """A bad value: exit 2, one line naming the file, the key and the limit."""
    path = isolated_env / "bad.toml"
    path.write_text('[providers.a1]\ntype = "a1111"\nsteps = 0\n')
    run = cli("config", "check", str(path), cwd=isolated_env)
    assert run.returncode == 2
    assert "bad.toml: providers.a1.steps: Input should be greater than or equal to 1" in run.stderr
    assert "Traceback" not in run.stderr
