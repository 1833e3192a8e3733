"""Fixtures shared by every test: an isolated user environment, offline hub access."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# huggingface_hub reads these once, at import: set them before anything imports it.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="imagegate-test-hf-")

import pytest
from tiny_pipeline import tiny_model, tiny_vae

pytest_plugins = ["faults"]

__all__ = ["isolated_env", "tiny_model", "tiny_vae"]


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point data, config and cwd at a temp folder so no test sees the user's files."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("IMAGEGATE_DATA_DIR", str(home / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "share"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("IMAGEGATE_CONFIG", "IMAGEGATE_ROUTE", "IMAGEGATE_API_KEYS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(home)
    return home
