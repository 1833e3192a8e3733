"""``imagegate usage``: jobs, images, seconds and cost by key, route, provider or day."""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imagegate.cli_history import settings_store
from imagegate.config import Settings, load_config
from imagegate.console import Console

COLUMNS = ("jobs", "succeeded", "images", "seconds", "cost", "tokens")


def add_usage_parser(
    sub: argparse._SubParsersAction[Any], parser_class: type[argparse.ArgumentParser]
) -> None:
    """The ``usage`` command."""
    del parser_class  # one level: no subcommands
    usage = sub.add_parser("usage", help="usage and cost by key, route, provider or day")
    usage.add_argument("--from", dest="start", help="ISO 8601 date or time (default: the 1st)")
    usage.add_argument("--to", dest="end", help="ISO 8601 date or time (default: now)")
    usage.add_argument(
        "--group-by", default="key", help="key, route, provider or day (default: key)"
    )
    out = usage.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print one JSON document")
    out.add_argument("--csv", action="store_true", help="print CSV with a header row")
    usage.add_argument("--config", type=Path, help="config file (default: imagegate.toml)")


def usage_command(args: argparse.Namespace, console: Console) -> int:
    """Print the usage table, JSON or CSV."""
    from imagegate.store.usage import check_group, window

    group_by = check_group(args.group_by)
    start, end = window(args.start, args.end, datetime.now(UTC))
    settings = load_config(args.config)
    rows = asyncio.run(_usage(settings, start, end, group_by))
    if args.json:
        console.json(
            {"from": start.isoformat(), "to": end.isoformat(), "group_by": group_by, "data": rows}
        )
        return 0
    if args.csv:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=[group_by, *COLUMNS], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        console.line(buffer.getvalue().rstrip("\n"))
        return 0
    console.table(
        [group_by, *COLUMNS],
        [
            [
                str(row[group_by]),
                *(str(row[c]) if c != "cost" else f"{row[c]:.4f}" for c in COLUMNS),
            ]
            for row in rows
        ],
    )
    return 0


async def _usage(
    settings: Settings, start: datetime, end: datetime, group_by: str
) -> list[dict[str, Any]]:
    from imagegate.store.usage import usage

    async with settings_store(settings) as store:
        rows = await usage(store, start=start, end=end, group_by=group_by)
    return [row.to_json(group_by) for row in rows]
