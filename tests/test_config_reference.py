"""The configuration reference: every key described, every registered provider type in it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagegate.config_keys import model_keys, reference_markdown, tables, undescribed
from imagegate.registry import provider_types

PLUGIN = '''
from typing import Literal
from pydantic import Field
from imagegate.config import ProviderConfig
from imagegate.providers.base import Provider


class PlugConfig(ProviderConfig):
    """A plug-in's settings."""

    type: Literal["plugtest"] = Field(default="plugtest", description="A test plug-in.")
    flavour: str = Field(default="vanilla", description="The flavour this plug-in serves.")
    {extra}


class PlugProvider(Provider):
    type = "plugtest"
    Config = PlugConfig

    async def generate(self, request, deadline, progress):
        raise NotImplementedError
'''


def install_plugin(root: Path, extra: str = "") -> None:
    """Install a provider distribution on sys.path, registered through the entry-point group."""
    (root / "plugtest_provider.py").write_text(PLUGIN.format(extra=extra), encoding="utf-8")
    info = root / "plugtest_provider-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: plugtest-provider\nVersion: 1.0\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(
        "[imagegate.providers]\nplugtest = plugtest_provider:PlugProvider\n", encoding="utf-8"
    )


@pytest.fixture
def plugin_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path for a plug-in distribution; the registry cache is reset around it."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    provider_types.cache_clear()
    yield root
    provider_types.cache_clear()
    sys.modules.pop("plugtest_provider", None)


def test_every_configuration_key_has_a_description() -> None:
    """Every key of every table and every registered provider type has a description."""
    assert undescribed() == []


def test_every_provider_type_is_in_the_reference() -> None:
    """The generated reference has a section per registered type listing each of its keys."""
    text = reference_markdown()
    for name, kind in provider_types().items():
        section = text.split(f"### `{name}`\n", 1)[1].split("\n### ", 1)[0]
        for key in model_keys(kind.cls.Config):
            assert f"| `{key.name}` |" in section, (name, key.name)


def test_every_fixed_table_key_is_in_the_reference() -> None:
    """[gateway], [server] and [scale] appear with each key, its default and its meaning."""
    text = reference_markdown()
    for table in tables():
        if table.provider_type is None:
            for key in table.keys:
                assert f"| `{key.name}` |" in text
                assert key.description in text


def test_reference_shows_type_default_and_limits() -> None:
    """A key's row gives its type, its default and its limits as the model states them."""
    row = next(
        line for line in reference_markdown().splitlines() if line.startswith("| `max_attempts`")
    )
    assert row.startswith("| `max_attempts` | integer | `3` | >= 1, <= 10 |")


def test_a_plugin_provider_type_is_documented_like_a_built_in(plugin_root: Path) -> None:
    """A provider type from another distribution's entry point gets its own section."""
    install_plugin(plugin_root)
    text = reference_markdown()
    assert "### `plugtest`" in text
    assert "(from `plugtest-provider`)" in text
    assert '| `flavour` | string | `"vanilla"` |  | The flavour this plug-in serves. |' in text
    assert undescribed() == []


def test_a_plugin_key_without_description_is_reported(plugin_root: Path) -> None:
    """A plug-in key with no description is named by the check the docs test runs."""
    install_plugin(plugin_root, extra="size: int = 3")
    assert undescribed() == ['[providers.NAME] type = "plugtest" size']
