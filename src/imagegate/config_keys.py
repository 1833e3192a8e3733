"""Every configuration key, read from the pydantic models: type, default, limits, meaning.

One source for the configuration reference in the docs (``docs/hooks.py`` renders it),
``imagegate config show`` and the test that every key has a description. Provider tables
come from every type registered in the ``imagegate.providers`` entry-point group, built-in
or not, so a plug-in's keys are documented the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from imagegate.config import (
    GatewaySettings,
    ProviderConfig,
    RouteSettings,
    ScaleSettings,
    ServerSettings,
    Settings,
    StorageSettings,
    WebhookSettings,
)
from imagegate.registry import provider_types

__all__ = [
    "TABLES",
    "ConfigKey",
    "Table",
    "model_keys",
    "provider_tables",
    "reference_markdown",
    "tables",
    "undescribed",
]

TABLES: dict[str, type[BaseModel]] = {
    "gateway": GatewaySettings,
    "routes": RouteSettings,
    "server": ServerSettings,
    "scale": ScaleSettings,
    "webhooks": WebhookSettings,
    "storage": StorageSettings,
}
"""The fixed top-level tables of imagegate.toml, in the order the reference shows them."""

_TYPES = {
    "string": "string",
    "integer": "integer",
    "number": "float",
    "boolean": "boolean",
    "array": "list",
    "object": "table",
}


@dataclass(frozen=True)
class ConfigKey:
    """One key of one table."""

    name: str
    type: str
    default: Any
    required: bool
    limits: str
    description: str

    @property
    def names_env(self) -> bool:
        """True for a key that names an environment variable (where secrets live)."""
        return self.name.endswith("_env")


@dataclass(frozen=True)
class Table:
    """One table of imagegate.toml: ``gateway``, ``server``, ``scale`` or one provider type."""

    title: str
    """``[gateway]``, ``[providers.NAME] type = "a1111"``, ..."""
    summary: str
    keys: tuple[ConfigKey, ...]
    provider_type: str | None = None
    origin: str | None = None


def model_keys(model: type[BaseModel]) -> tuple[ConfigKey, ...]:
    """The keys of one table model, from its JSON schema (excluded fields left out)."""
    schema = model.model_json_schema()
    props: dict[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", []))
    keys = []
    for name, field in model.model_fields.items():
        if field.exclude or name not in props:
            continue
        prop = props[name]
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        keys.append(
            ConfigKey(
                name=name,
                type=_type(prop),
                default=default,
                required=name in required,
                limits=_limits(prop),
                description=(field.description or "").strip(),
            )
        )
    return tuple(keys)


def provider_tables() -> list[Table]:
    """One table per registered provider type, sorted by type name."""
    found = []
    for name, kind in sorted(provider_types().items()):
        config: type[ProviderConfig] = kind.cls.Config
        doc = (config.__doc__ or "").strip().split("\n\n")[0]
        found.append(
            Table(
                title=f'[providers.NAME] type = "{name}"',
                summary=" ".join(doc.split()),
                keys=model_keys(config),
                provider_type=name,
                origin=kind.origin,
            )
        )
    return found


def tables() -> list[Table]:
    """Every table: the fixed ones, then one per provider type."""
    fixed = [
        Table(
            title=f"[{name}.NAME]" if name == "routes" else f"[{name}]",
            summary=(Settings.model_fields[name].description or "").strip(),
            keys=model_keys(model),
        )
        for name, model in TABLES.items()
    ]
    return fixed + provider_tables()


def undescribed() -> list[str]:
    """``table.key`` for every key without a description (the docs test wants none)."""
    return [
        f"{table.title} {key.name}"
        for table in tables()
        for key in table.keys
        if not key.description
    ]


def format_value(value: Any) -> str:
    """A default as it would be written in TOML; ``none`` for unset."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value, default=str)


def reference_markdown() -> str:
    """The configuration reference page (Markdown), generated; never edited by hand."""
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated from the pydantic models by docs/hooks.py: edit the Field descriptions "
        "in the code, not this page. -->",
        "",
        "imagegate reads `imagegate.toml` (lookup order: `--config`, `IMAGEGATE_CONFIG`, "
        "`./imagegate.toml`, the user config dir, the built-in default). Every key below is "
        "optional unless marked *required*; `none` means unset (leave the key out). "
        "`imagegate config show` prints the effective value of each and where it came from; "
        "`imagegate config check FILE` validates a file.",
        "",
        "Secrets never go in the file: keys ending in `_env` name the environment variable "
        "that holds one.",
        "",
    ]
    provider_part = False
    for table in tables():
        if table.provider_type and not provider_part:
            provider_part = True
            out += [
                "## Providers",
                "",
                "Each `[providers.NAME]` table configures one provider; `NAME` is what "
                "`gateway.route` lists and `type` picks one of the types below. Types come "
                "from the `imagegate.providers` entry-point group, so a plug-in's appear "
                "here too.",
                "",
            ]
        level = "###" if table.provider_type else "##"
        heading = f"`{table.provider_type}`" if table.provider_type else f"`{table.title}`"
        out += [f"{level} {heading}", ""]
        if table.provider_type:
            origin = "" if table.origin == "built-in" else f" (from `{table.origin}`)"
            out += [f"`{table.title}`{origin}: {table.summary}", ""]
        elif table.summary:
            out += [table.summary, ""]
        out += ["| key | type | default | limits | meaning |", "|---|---|---|---|---|"]
        for key in table.keys:
            default = "*required*" if key.required else f"`{format_value(key.default)}`"
            cells = [f"`{key.name}`", key.type, default, key.limits, key.description]
            out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        out.append("")
    return "\n".join(out)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _variants(prop: dict[str, Any]) -> list[dict[str, Any]]:
    options = prop.get("anyOf")
    return [v for v in options if v.get("type") != "null"] if options else [prop]


def _type(prop: dict[str, Any]) -> str:
    names = []
    for variant in _variants(prop):
        if "const" in variant:
            names.append(format_value(variant["const"]))
        elif "enum" in variant:
            names.append(" \\| ".join(format_value(v) for v in variant["enum"]))
        elif variant.get("type") == "array":
            item = _type(variant.get("items", {}))
            names.append(f"list of {item}" if item else "list")
        else:
            names.append(_TYPES.get(str(variant.get("type")), "value"))
    return " or ".join(names)


def _limits(prop: dict[str, Any]) -> str:
    parts = []
    for variant in _variants(prop):
        bounds = {
            "minimum": ">= {}",
            "exclusiveMinimum": "> {}",
            "maximum": "<= {}",
            "exclusiveMaximum": "< {}",
            "multipleOf": "a multiple of {}",
            "minLength": "at least {} characters",
            "maxLength": "at most {} characters",
            "minItems": "at least {} item(s)",
            "maxItems": "at most {} item(s)",
            "pattern": "matches `{}`",
        }
        parts += [text.format(variant[key]) for key, text in bounds.items() if key in variant]
    return ", ".join(parts)
