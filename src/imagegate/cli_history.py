"""``imagegate history prune``: delete old images now (the retention sweep, on demand)."""

from __future__ import annotations

import argparse
import asyncio
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from imagegate.config import Settings, load_config
from imagegate.console import Console
from imagegate.errors import InvalidRequest

if TYPE_CHECKING:
    from imagegate.store import Store
    from imagegate.store.retention import PruneReport

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([dhms])\s*")
_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


def add_prune(
    history: argparse.ArgumentParser, parser_class: type[argparse.ArgumentParser]
) -> None:
    """``history prune --older-than 30d [--dry-run]`` under the ``history`` command."""
    sub = history.add_subparsers(dest="history_command", parser_class=parser_class)
    prune = sub.add_parser("prune", help="delete images older than a given age, oldest first")
    prune.add_argument(
        "--older-than", required=True, metavar="AGE", help="an age: 30d, 12h, 45m or 90s"
    )
    prune.add_argument("--dry-run", action="store_true", help="say what would go; delete nothing")
    prune.add_argument("--config", type=Path, help="config file (default: imagegate.toml)")
    prune.add_argument("--json", action="store_true", help="print one JSON document")


def parse_age(text: str) -> timedelta:
    """``30d`` -> 30 days; InvalidRequest naming --older-than otherwise."""
    match = _DURATION.fullmatch(text)
    if match is None or float(match[1]) <= 0:
        raise InvalidRequest(
            f"--older-than: must be a positive age with a unit d, h, m or s (e.g. 30d); "
            f"got {text!r}",
            field="older_than",
            limit="a positive number followed by d, h, m or s",
        )
    return timedelta(**{_UNITS[match[2]]: float(match[1])})


def prune_command(args: argparse.Namespace, console: Console) -> int:
    """Run one prune and print what it deleted (or would)."""
    age = parse_age(args.older_than)
    settings = load_config(args.config)
    report = asyncio.run(_prune(settings, datetime.now(UTC) - age, args.dry_run))
    if args.json:
        console.json(report.to_json())
        return 0
    verb = "would delete" if report.dry_run else "deleted"
    if report.skipped:
        console.info("another retention sweep is running; try again in a moment")
        return 0
    console.line(
        f"{verb} {report.images} images ({report.files} files, {report.bytes / 1e6:.1f} MB) "
        f"older than {args.older_than}"
    )
    return 0


def settings_store(settings: Settings) -> Store:
    """The Store the server uses: PostgreSQL's when scaled out, else the data dir's SQLite."""
    from imagegate.store import Store

    if settings.scale.backplane:
        from imagegate.backplane.postgres import shared_store

        return shared_store(settings)
    return Store(settings.data_dir, storage=settings.storage)


async def _prune(settings: Settings, older_than: datetime, dry_run: bool) -> PruneReport:
    from imagegate.store.retention import prune

    async with settings_store(settings) as store:
        return await prune(store, older_than=older_than, dry_run=dry_run)
