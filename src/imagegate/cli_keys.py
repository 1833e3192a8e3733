"""``imagegate keys create | list | revoke``: managed API keys (tenants) in the store.

``create`` prints the new key once, on stdout; only its SHA-256 is stored. Limits: ``--routes
a,b`` (routes or providers it may use), ``--rate 60/min`` (or ``N/s``), ``--budget 5.00
--period day|month``. ``--admin`` makes an admin key (may manage keys, sees every job).
"""

from __future__ import annotations

import argparse
import asyncio
import re
from pathlib import Path
from typing import Any

from imagegate.cli_history import settings_store
from imagegate.config import Settings, load_config
from imagegate.console import Console
from imagegate.errors import InvalidRequest

_RATE = re.compile(r"\s*(\d+)\s*/\s*(s|sec|second|m|min|minute)\s*")


def add_keys_parser(
    sub: argparse._SubParsersAction[Any], parser_class: type[argparse.ArgumentParser]
) -> None:
    """The ``keys`` command and its three subcommands."""
    keys = sub.add_parser("keys", help="create, list and revoke managed API keys (tenants)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, parser_class=parser_class)
    create = keys_sub.add_parser("create", help="create a key and print it once")
    create.add_argument("name", help="the tenant's name, unique")
    create.add_argument("--routes", help="comma-separated routes or providers it may use")
    create.add_argument("--rate", help="requests it may submit, e.g. 60/min or 2/s")
    create.add_argument("--budget", help="spend allowed per --period, e.g. 5.00")
    create.add_argument("--period", help="day or month (with --budget)")
    create.add_argument("--admin", action="store_true", help="an admin key")
    create.add_argument(
        "--webhook-url",
        help="where the end of its jobs is posted when a job names no webhook_url",
    )
    listing = keys_sub.add_parser("list", help="list the keys (never the keys themselves)")
    listing.add_argument("--json", action="store_true", help="print one JSON document")
    revoke = keys_sub.add_parser("revoke", help="revoke a key by name")
    revoke.add_argument("name", help="the name the key was created with")
    for parser in (create, listing, revoke):
        parser.add_argument("--config", type=Path, help="config file (default: imagegate.toml)")


def parse_rate(text: str) -> int:
    """``60/min`` -> 60 a minute, ``2/s`` -> 120; InvalidRequest naming --rate otherwise."""
    match = _RATE.fullmatch(text)
    if match is None or int(match[1]) < 1:
        raise InvalidRequest(
            f"--rate: must be a positive count per minute or second, e.g. 60/min or 2/s; "
            f"got {text!r}",
            field="rate",
            limit="N/min or N/s, N >= 1",
        )
    count = int(match[1])
    return count * 60 if match[2].startswith("s") else count


def parse_budget(budget: str | None, period: str | None) -> tuple[float | None, str | None]:
    """A budget and its period; InvalidRequest naming --budget or --period when malformed."""
    if budget is None:
        if period is not None:
            raise InvalidRequest("--period: only with --budget", field="period")
        return None, None
    try:
        amount = float(budget)
    except ValueError:
        amount = -1.0
    if not amount >= 0 or amount == float("inf"):
        raise InvalidRequest(
            f"--budget: must be a non-negative amount, e.g. 5.00; got {budget!r}",
            field="budget",
            limit=">= 0",
        )
    if period not in ("day", "month"):
        raise InvalidRequest(
            f"--period: must be day or month; got {period!r}",
            field="period",
            limit="one of day, month",
        )
    return amount, period


def keys_command(args: argparse.Namespace, console: Console) -> int:
    """Run ``keys create``, ``keys list`` or ``keys revoke``."""
    settings = load_config(args.config)
    if args.keys_command == "create":
        rate = parse_rate(args.rate) if args.rate is not None else None
        budget, period = parse_budget(args.budget, args.period)
        routes = [r.strip() for r in args.routes.split(",") if r.strip()] if args.routes else None
        _check_routes(settings, routes)
        if args.webhook_url is not None:
            from imagegate.transport.guard import check_url

            check_url(
                args.webhook_url,
                allow_private=settings.webhooks.allow_private,
                label="--webhook-url",
            )
        key = asyncio.run(
            _create(settings, args.name, args.admin, routes, rate, budget, period, args.webhook_url)
        )
        console.line(key)
        console.info(f"created key {args.name!r}; this is the only time it is shown")
        return 0
    if args.keys_command == "list":
        records = asyncio.run(_list(settings))
        if args.json:
            console.json([r.model_dump(mode="json") for r in records])
            return 0
        console.table(
            ["name", "admin", "routes", "rate/min", "budget", "created"],
            [
                [
                    r.name,
                    "yes" if r.admin else "",
                    ",".join(r.routes) if r.routes else "all",
                    str(r.rate_per_min or "-"),
                    f"{r.budget:.2f}/{r.period}" if r.budget is not None else "-",
                    r.created_at.strftime("%Y-%m-%d %H:%M"),
                ]
                for r in records
            ],
        )
        return 0
    asyncio.run(_revoke(settings, args.name))
    console.info(f"revoked key {args.name!r}")
    return 0


def _check_routes(settings: Settings, routes: list[str] | None) -> None:
    allowed = ["default", *settings.routes, *settings.providers]
    for name in routes or []:
        if name not in allowed:
            raise InvalidRequest(
                f"--routes: {name!r} is neither a route nor a provider (allowed: "
                f"{', '.join(allowed)})",
                field="routes",
            )


async def _create(
    settings: Settings,
    name: str,
    admin: bool,
    routes: list[str] | None,
    rate: int | None,
    budget: float | None,
    period: str | None,
    webhook_url: str | None = None,
) -> str:
    from imagegate.store.keys import create_key

    async with settings_store(settings) as store:
        key, _ = await create_key(
            store,
            name,
            admin=admin,
            routes=routes,
            rate_per_min=rate,
            budget=budget,
            period=period,
            webhook_url=webhook_url,
        )
    return key


async def _list(settings: Settings) -> list[Any]:
    from imagegate.store.keys import list_keys

    async with settings_store(settings) as store:
        return list(await list_keys(store))


async def _revoke(settings: Settings, name: str) -> None:
    from imagegate.server.auth import keys_from_env
    from imagegate.store.keys import revoke_key

    async with settings_store(settings) as store:
        await revoke_key(store, name, env_admins=len(keys_from_env(settings.server.api_keys_env)))
