"""What the A1111 surface lists besides checkpoints: A1111 1.10's default options and
command-line flags (``options.json``, ``cmd_flags.json``, recorded from a real server), the
samplers and schedulers a route runs, and the memory of this host.

imagegate has no upscalers, VAEs, LoRAs, styles, embeddings or scripts to offer: those lists
answer A1111's shape, with nothing in them beyond A1111's "None" upscaler.
"""

from __future__ import annotations

import functools
import json
import os
from importlib import resources
from typing import Any

from imagegate.errors import ImagegateError
from imagegate.request import ImageRequest
from imagegate.sampling import SAMPLERS, SCHEDULERS
from imagegate.server.deps import ServerContext

__all__ = [
    "UNDERSTOOD_OPTIONS",
    "cmd_flags",
    "default_options",
    "memory",
    "samplers",
    "schedulers",
    "upscalers",
]

UNDERSTOOD_OPTIONS = frozenset({"sd_model_checkpoint"})
"""The options POST /sdapi/v1/options keeps; A1111 acknowledges and ignores the others."""


@functools.cache
def _data(name: str) -> dict[str, Any]:
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def default_options() -> dict[str, Any]:
    """A1111 1.10's default options (a fresh copy)."""
    return dict(_data("options.json"))


def cmd_flags(data_dir: str) -> dict[str, Any]:
    """A1111 1.10's flags as a server started with ``--api --nowebui`` has them, its paths
    under imagegate's data directory."""

    def place(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace("{data_dir}", data_dir)
        if isinstance(value, list):
            return [place(item) for item in value]
        return value

    return {key: place(value) for key, value in _data("cmd_flags.json").items()}


def _route(ctx: ServerContext) -> list[str]:
    """The providers the selected checkpoint runs on."""
    try:
        probe = ImageRequest(prompt="-", **ctx.a1111_checkpoint)  # type: ignore[arg-type]
        return ctx.gateway.route_for(probe)
    except ImagegateError:
        return []


def samplers(ctx: ServerContext) -> list[dict[str, Any]]:
    """The samplers the selected checkpoint's providers run (all, when none takes one)."""
    names, _ = ctx.gateway.sampling(_route(ctx))
    return [
        {"name": info.name, "aliases": list(info.aliases), "options": dict(info.options)}
        for info in SAMPLERS
        if names is None or info.name in names
    ]


def schedulers(ctx: ServerContext) -> list[dict[str, Any]]:
    """The schedulers the selected checkpoint's providers run (all, when none takes one)."""
    _, names = ctx.gateway.sampling(_route(ctx))
    return [info.answer() for info in SCHEDULERS if names is None or info.name in names]


def upscalers() -> list[dict[str, Any]]:
    """A1111's "None" upscaler only: imagegate does not upscale."""
    return [
        {"name": "None", "model_name": None, "model_path": None, "model_url": None, "scale": 4.0}
    ]


def memory() -> dict[str, Any]:
    """``/sdapi/v1/memory``: this host's RAM; no CUDA figures (imagegate does not load
    torch to answer)."""
    ram: dict[str, Any]
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total = float(page * os.sysconf("SC_PHYS_PAGES"))
        free = float(page * os.sysconf("SC_AVPHYS_PAGES"))
        ram = {"free": free, "used": int(total - free), "total": total}
    except (ValueError, OSError, AttributeError):
        ram = {"error": "unavailable"}
    return {"ram": ram, "cuda": {"error": "unavailable"}}
