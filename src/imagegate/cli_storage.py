"""``imagegate storage migrate --to BACKEND``: copy the stored images to another backend."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from imagegate.config import Settings, StorageSettings, load_config
from imagegate.console import Console
from imagegate.errors import ConfigError

BACKENDS = ("file", "postgresql", "s3")


def add_storage_parser(sub: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """``storage migrate --to BACKEND [--bucket B] [--prefix P] [--endpoint URL] [--region R]``."""
    storage = sub.add_parser("storage", help="manage where image bytes live ([storage])")
    verbs = storage.add_subparsers(dest="storage_command", required=True, parser_class=parser_class)
    migrate = verbs.add_parser(
        "migrate",
        help="copy every stored image from the configured backend to another; "
        "idempotent and resumable (run it again to finish or to check)",
    )
    migrate.add_argument(
        "--to", required=True, choices=BACKENDS, help="the backend to copy the images to"
    )
    migrate.add_argument(
        "--bucket", help="the target S3 bucket (default: [storage] bucket); needed for s3"
    )
    migrate.add_argument("--prefix", help="the target S3 key prefix (default: [storage] prefix)")
    migrate.add_argument(
        "--endpoint", help="the target S3 endpoint URL (default: [storage] endpoint, else AWS)"
    )
    migrate.add_argument("--region", help="the target S3 region (default: [storage] region)")
    migrate.add_argument("--config", type=Path, help="config file (default: imagegate.toml)")
    migrate.add_argument("--json", action="store_true", help="print one JSON document")


def storage_command(args: argparse.Namespace, console: Console) -> int:
    """Run ``storage migrate``: copy, then say how many images were copied and skipped."""
    settings = load_config(args.config)
    target = _target(settings, args)
    report = asyncio.run(_migrate(settings, target, console, quiet=args.json))
    if args.json:
        console.json({"from": settings.storage.backend, "to": target.backend, **report})
        return 0
    console.line(
        f"{settings.storage.backend} -> {target.backend}: copied {report['copied']} images "
        f"({report['bytes'] / 1e6:.1f} MB), {report['skipped']} already there"
    )
    return 0


def _target(settings: Settings, args: argparse.Namespace) -> StorageSettings:
    here = settings.storage
    changes = {
        key: value
        for key, value in {
            "bucket": args.bucket,
            "prefix": args.prefix,
            "endpoint": args.endpoint,
            "region": args.region,
        }.items()
        if value is not None
    }
    target = here.model_copy(update={"backend": args.to, **changes})
    if target.backend == "s3" and not target.bucket:
        raise ConfigError("--to s3 needs a bucket: pass --bucket or set it", key="--bucket")
    if target.backend == "postgresql" and not settings.scale.backplane:
        raise ConfigError(
            "--to postgresql keeps images in the [scale] backplane database; set scale.backplane",
            key="--to",
        )
    if target == here:
        raise ConfigError(
            f"the images are in {here.backend} storage already; name another backend or "
            "another bucket or prefix",
            key="--to",
        )
    return target


async def _migrate(
    settings: Settings, target: StorageSettings, console: Console, *, quiet: bool
) -> dict[str, int]:
    from imagegate.cli_history import settings_store
    from imagegate.store.transfer import copy_images

    source = settings_store(settings)
    destination = settings_store(settings.model_copy(update={"storage": target}))
    async with source, destination:

        def said(sha256: str, copied: bool) -> None:
            if copied and not quiet:
                console.info(f"copied {sha256}")

        report = await copy_images(source.images, destination.images, on_image=said)
    return report.to_json()
