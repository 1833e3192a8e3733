"""`imagegate doctor` against the A1111 fake rebuilt from a real A1111 1.10.1's answers:
checkpoints are matched as A1111 matches them, the loaded one is named, and a server that
wants credentials is explained without naming a variable that is not configured."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from faults import serve_app
from serverkit import IMAGEGATE
from vendor_a1111 import A1111Fake


def doctor(folder: Path, url: str, extra: str = "") -> dict[str, object]:
    """Run `imagegate doctor --json` on one a1111 provider at ``url``; the provider's row."""
    (folder / "imagegate.toml").write_text(
        f'[gateway]\nroute = ["sd"]\n\n[providers.sd]\ntype = "a1111"\nurl = "{url}"\n{extra}',
        encoding="utf-8",
    )
    done = subprocess.run(
        [IMAGEGATE, "doctor", "--json"],
        cwd=folder,
        env={**os.environ, "COLUMNS": "120"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    report = json.loads(done.stdout)
    [row] = report["providers"]
    row["exit"] = done.returncode
    return dict(row)


@pytest.mark.parametrize(
    "model",
    ["sd15-random.safetensors", "sd15-random", "sd15-random.safetensors [812273d380]"],
)
def test_checkpoint_found_fresh_and_after_a_load(isolated_env: Path, model: str) -> None:
    """The file name, model name or title with hash passes before A1111 hashed the file (its
    title has no hash yet) and after it loaded it (the title gains " [hash]")."""
    fake = A1111Fake()
    with serve_app(fake.app()) as url:
        fresh = doctor(isolated_env, url, f'model = "{model}"\n')
        fake.load("sd15-random.safetensors")
        loaded = doctor(isolated_env, url, f'model = "{model}"\n')
    assert fresh["exit"] == 0, fresh
    assert loaded["exit"] == 0, loaded
    assert "loaded: sd15-random-b.safetensors [cd5a484377]" in json.dumps(fresh)
    assert "loaded: sd15-random.safetensors [812273d380]" in json.dumps(loaded)


def test_credentials_wanted_without_auth_env_says_to_set_auth_env(isolated_env: Path) -> None:
    """--api-auth on the server, no auth_env here: the report says to configure auth_env and
    never "from no key" or "the variable that auth_env names"."""
    fake = A1111Fake(auth=("alice", "s3cret-pass"))
    with serve_app(fake.app()) as url:
        row = doctor(isolated_env, url)
    text = json.dumps(row)
    assert row["exit"] != 0
    assert "auth_env" in text
    assert "from no key" not in text
    assert "the variable that auth_env names" not in text
