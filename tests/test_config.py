"""load_config: the lookup order, environment overrides, and errors that say how to fix them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imagegate.config import load_config, parse_settings
from imagegate.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_default_is_one_local_diffusers_provider(isolated_env: Path) -> None:
    """With no file anywhere, the route is ["local"] on the embedded diffusers provider."""
    settings = load_config()
    assert settings.source is None
    assert settings.gateway.route == ["local"]
    assert settings.providers["local"].type == "diffusers"


def test_explicit_path_beats_env_and_cwd(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--config wins over IMAGEGATE_CONFIG, which wins over ./imagegate.toml."""
    explicit = write(isolated_env / "a.toml", "[gateway]\ndeadline_s = 11\n")
    env = write(isolated_env / "b.toml", "[gateway]\ndeadline_s = 22\n")
    write(isolated_env / "imagegate.toml", "[gateway]\ndeadline_s = 33\n")
    monkeypatch.setenv("IMAGEGATE_CONFIG", str(env))
    assert load_config(explicit).gateway.deadline_s == 11
    assert load_config().gateway.deadline_s == 22
    monkeypatch.delenv("IMAGEGATE_CONFIG")
    assert load_config().gateway.deadline_s == 33


def test_user_config_dir_is_last_before_default(isolated_env: Path) -> None:
    """A file in the user config dir is used when no other is found."""
    write(isolated_env / "config" / "imagegate" / "imagegate.toml", "[gateway]\ndeadline_s = 44\n")
    assert load_config().gateway.deadline_s == 44


def test_route_env_overrides_the_file(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """IMAGEGATE_ROUTE="a,b" replaces the configured route."""
    write(
        isolated_env / "imagegate.toml",
        '[providers.a]\ntype = "diffusers"\n[providers.b]\ntype = "diffusers"\n',
    )
    monkeypatch.setenv("IMAGEGATE_ROUTE", "b, a")
    assert load_config().gateway.route == ["b", "a"]


def test_data_dir_env_overrides_the_file(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """IMAGEGATE_DATA_DIR beats gateway.data_dir."""
    write(isolated_env / "imagegate.toml", '[gateway]\ndata_dir = "/nowhere"\n')
    monkeypatch.setenv("IMAGEGATE_DATA_DIR", str(isolated_env / "d"))
    assert load_config().data_dir == isolated_env / "d"


def test_dotenv_in_cwd_is_read(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A .env file in the working directory sets variables that are not already set."""
    monkeypatch.delenv("IMAGEGATE_ROUTE", raising=False)
    write(isolated_env / ".env", "IMAGEGATE_ROUTE=x\n")
    write(isolated_env / "imagegate.toml", '[providers.x]\ntype = "diffusers"\n')
    try:
        assert load_config().gateway.route == ["x"]
    finally:
        # load_dotenv wrote os.environ directly; monkeypatch would restore its value.
        os.environ.pop("IMAGEGATE_ROUTE", None)


def test_misspelt_key_is_an_error_listing_allowed_keys(isolated_env: Path) -> None:
    """An unknown key names the file, the key and the keys that exist."""
    path = write(isolated_env / "imagegate.toml", "[gateway]\ndeadline = 5\n")
    with pytest.raises(ConfigError) as info:
        load_config()
    assert info.value.file == str(path)
    assert info.value.key == "gateway.deadline"
    assert "deadline_s" in (info.value.allowed or [])


def test_misspelt_provider_key_is_an_error(isolated_env: Path) -> None:
    """Unknown keys inside a provider table are refused too."""
    write(isolated_env / "imagegate.toml", '[providers.local]\ntype = "diffusers"\nmodle = "x"\n')
    with pytest.raises(ConfigError) as info:
        load_config()
    assert info.value.key == "providers.local.modle"
    assert "model" in (info.value.allowed or [])


def test_unknown_provider_type_lists_the_known_ones(isolated_env: Path) -> None:
    """type = "nope" names the registered types."""
    write(isolated_env / "imagegate.toml", '[providers.p]\ntype = "nope"\n')
    with pytest.raises(ConfigError) as info:
        load_config()
    assert info.value.key == "providers.p.type"
    assert "diffusers" in (info.value.allowed or [])


def test_bad_literal_value_names_the_allowed_values(isolated_env: Path) -> None:
    """dtype = "fp8" is refused with the allowed values in the message."""
    write(isolated_env / "imagegate.toml", '[providers.local]\ntype = "diffusers"\ndtype = "fp8"\n')
    with pytest.raises(ConfigError, match=r"providers\.local\.dtype.*'float32'"):
        load_config()


def test_route_naming_an_unconfigured_provider_is_an_error(isolated_env: Path) -> None:
    """Every route entry must be a configured provider."""
    write(isolated_env / "imagegate.toml", '[gateway]\nroute = ["ghost"]\n')
    with pytest.raises(ConfigError) as info:
        load_config()
    assert info.value.key == "gateway.route"


def test_zero_timeout_is_refused(isolated_env: Path) -> None:
    """A timeout of 0 would disable the guard, so it is refused."""
    write(isolated_env / "imagegate.toml", "[gateway]\ndeadline_s = 0\n")
    with pytest.raises(ConfigError, match=r"gateway\.deadline_s"):
        load_config()


def test_invalid_toml_names_the_file(isolated_env: Path) -> None:
    """A syntax error names the file."""
    path = write(isolated_env / "imagegate.toml", "[gateway\n")
    with pytest.raises(ConfigError, match=str(path)):
        load_config()


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({"type": "openai"}, 64),
        ({"type": "novita"}, 64),
        ({"type": "stability"}, 64),
        ({"type": "hf-inference", "model": "m"}, 64),
        ({"type": "gradio", "space": "owner/name"}, 2),
        ({"type": "a1111", "url": "http://127.0.0.1:7860"}, 1),
        ({"type": "comfyui", "url": "http://127.0.0.1:8188", "checkpoint": "m.safetensors"}, 1),
        ({"type": "diffusers"}, 8),
    ],
)
def test_each_provider_type_defaults_to_a_concurrency_that_fits_its_backend(
    table: dict[str, str], expected: int
) -> None:
    """Hosted APIs take many requests at once, Spaces a few, servers that serialize one; the
    embedded pipeline takes several and batches them into one call at a time."""
    settings = parse_settings({"gateway": {"route": ["p"]}, "providers": {"p": table}})
    assert settings.providers["p"].concurrency == expected
