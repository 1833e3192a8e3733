"""``imagegate config show`` and ``imagegate config check``: the configuration as imagegate sees it.

``show`` prints every key of every table with its effective value (defaults filled in), where
that value came from (``file``, ``environment`` or ``default``) and its one-line meaning from
the pydantic models; a key that names an environment variable shows only whether that
variable is set, never its value. ``check FILE`` validates a file without starting anything
(exit 2 with the file and key on an error).
"""

from __future__ import annotations

import argparse
import os
import tomllib
from pathlib import Path
from typing import Any

from imagegate.config import config_path, load_config
from imagegate.config_keys import TABLES, ConfigKey, format_value, model_keys
from imagegate.console import Console

__all__ = ["ENV_OVERRIDES", "add_config_parser", "effective_config", "run_config"]

ENV_OVERRIDES = {
    ("gateway", "route"): "IMAGEGATE_ROUTE",
    ("gateway", "data_dir"): "IMAGEGATE_DATA_DIR",
}
"""Keys an environment variable overrides, and that variable."""


def add_config_parser(sub: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """Add ``config show [--json]`` and ``config check FILE`` to the command tree."""
    cfg = sub.add_parser("config", help="show the effective configuration, or check a file")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, parser_class=parser_class)
    show = cfg_sub.add_parser(
        "show", help="every key's effective value, its source (file, environment, default)"
    )
    show.add_argument("--config", type=Path, help="config file (default: imagegate.toml)")
    show.add_argument("--json", action="store_true", help="print one JSON document")
    check = cfg_sub.add_parser("check", help="validate a config file without starting anything")
    check.add_argument("file", type=Path, help="the imagegate.toml to check")


def run_config(args: argparse.Namespace, console: Console) -> int:
    """Run ``config show`` or ``config check``; a ConfigError propagates (exit 2)."""
    if args.config_command == "check":
        settings = load_config(args.file)
        console.line(
            f"{args.file}: ok: route {', '.join(settings.gateway.route)}; "
            f"providers {', '.join(sorted(settings.providers))}"
        )
        return 0
    document = effective_config(args.config)
    if args.json:
        console.json(document)
        return 0
    console.line(f"# file: {document['file'] or 'none (built-in defaults)'}")
    for table, keys in document["tables"].items():
        _print_table(console, f"[{table}]", keys)
    for name, keys in document["providers"].items():
        _print_table(console, f"[providers.{name}]", keys)
    return 0


def effective_config(path: Path | None = None) -> dict[str, Any]:
    """Every key with ``value``, ``source`` and ``description``; secrets as set/not set."""
    settings = load_config(path)
    source = config_path(path)
    raw: dict[str, Any] = (
        tomllib.loads(source.read_text(encoding="utf-8")) if source is not None else {}
    )
    tables: dict[str, Any] = {}
    for name, model in TABLES.items():
        if name == "routes":
            for route, route_cfg in settings.routes.items():
                given = raw.get("routes", {}).get(route, {})
                tables[f"routes.{route}"] = _keys(model_keys(model), route_cfg, given, name)
            continue
        tables[name] = _keys(model_keys(model), getattr(settings, name), raw.get(name, {}), name)
    providers = {
        pname: _keys(
            model_keys(type(cfg)), cfg, raw.get("providers", {}).get(pname, {}), "providers"
        )
        for pname, cfg in settings.providers.items()
    }
    return {"file": str(source) if source else None, "tables": tables, "providers": providers}


def _keys(
    keys: tuple[ConfigKey, ...], values: Any, given: dict[str, Any], table: str
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in keys:
        value = getattr(values, key.name)
        env = ENV_OVERRIDES.get((table, key.name))
        if env and os.environ.get(env):
            source = f"environment ({env})"
            if key.name == "data_dir":
                value = os.environ[env]
        elif key.name in given:
            source = "file"
        else:
            source = "default"
        entry: dict[str, Any] = {
            "value": value if not isinstance(value, Path) else str(value),
            "source": source,
            "description": key.description,
        }
        if key.names_env:
            entry["secret"] = "set" if value and os.environ.get(str(value)) else "not set"
        out[key.name] = entry
    return out


def _print_table(console: Console, title: str, keys: dict[str, Any]) -> None:
    console.line("")
    console.line(title)
    for name, entry in keys.items():
        value = format_value(entry["value"])
        secret = f" ({entry['secret']})" if "secret" in entry else ""
        console.line(f"{name} = {value}{secret}  # {entry['source']}: {entry['description']}")
