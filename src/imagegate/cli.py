"""The command line: it parses arguments and prints results, nothing else.

Exit codes: 0 ok, 2 invalid input or config, 3 every provider failed, 1 anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import ipaddress
import os
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from imagegate.allocator import reexec_tuned
from imagegate.cli_config import add_config_parser, run_config
from imagegate.cli_history import add_prune, prune_command
from imagegate.cli_keys import add_keys_parser, keys_command
from imagegate.cli_storage import add_storage_parser, storage_command
from imagegate.cli_usage import add_usage_parser, usage_command
from imagegate.config import Settings, load_config
from imagegate.console import Console
from imagegate.errors import ConfigError, ImagegateError, InvalidRequest
from imagegate.inputs import InputImage, normalize_mask
from imagegate.providers.base import Progress, provider_types
from imagegate.redaction import install_log_redaction
from imagegate.request import ImageRequest, ImageResult, parse_size

if TYPE_CHECKING:
    from imagegate.gateway import Gateway

EXIT_OK, EXIT_ERROR, EXIT_INVALID, EXIT_FAILED = 0, 1, 2, 3
TUNED_COMMANDS = frozenset({"generate", "edit", "serve", "worker"})  # may run a local pipeline


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad usage in one line through our writer, with exit code 2."""

    console: Console

    def error(self, message: str) -> NoReturn:
        Console().error(f"{message} (see `{self.prog} --help`)")
        raise SystemExit(EXIT_INVALID)


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree."""
    parser = _Parser(prog="imagegate", description="A text-to-image gateway that never hangs.")
    parser.add_argument("--version", action="version", version=f"imagegate {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    gen = sub.add_parser("generate", help="generate images from a prompt")
    gen.add_argument("prompt", help="what to draw (1-4000 characters)")
    _generation_args(gen)

    edit = sub.add_parser("edit", help="edit an image: image to image, or inpainting with --mask")
    edit.add_argument("image", type=Path, help="the image to edit (PNG, JPEG or WebP)")
    edit.add_argument("prompt", help="what the edited image shows (1-4000 characters)")
    edit.add_argument(
        "--mask", type=Path, help="inpaint only here: an image of the same size, white = repaint"
    )
    edit.add_argument(
        "--strength", type=float, help="share of the image re-noised (0-1); default 0.75"
    )
    edit.add_argument("--mask-blur", type=int, help="pixels of mask blur (0-64); default 4")
    _generation_args(edit)

    serve = sub.add_parser("serve", help="run the HTTP server (OpenAI, A1111 and jobs APIs)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8000, help="port (default 8000)")
    _common(serve, json_flag=False)

    worker = sub.add_parser("worker", help="run one scaled-out worker for one queue")
    worker.add_argument(
        "--queue", required=True, help='a local provider\'s name, or "remote" for remote ones'
    )
    _common(worker, json_flag=False)

    prov = sub.add_parser("providers", help="list the configured providers")
    _common(prov, json_flag=True)

    doctor = sub.add_parser("doctor", help="check each provider stage by stage: cause and fix")
    doctor.add_argument("names", nargs="*", metavar="NAME", help="providers (default: all)")
    doctor.add_argument("--generate", action="store_true", help="also make one tiny test image")
    _common(doctor, json_flag=True)

    hist = sub.add_parser("history", help="list recent generations")
    hist.add_argument("--limit", type=int, default=20, help="how many generations to list")
    _common(hist, json_flag=True)
    add_prune(hist, _Parser)

    models = sub.add_parser("models", help="download and list local models")
    models_sub = models.add_subparsers(dest="models_command", required=True, parser_class=_Parser)
    pull = models_sub.add_parser("pull", help="download a model into the local cache")
    pull.add_argument("model", help="a Hugging Face hub id, e.g. stabilityai/sd-turbo")
    models_sub.add_parser("list", help="list the models in the local cache").add_argument(
        "--json", action="store_true", help="print one JSON document"
    )
    add_config_parser(sub, _Parser)
    add_keys_parser(sub, _Parser)
    add_usage_parser(sub, _Parser)
    add_storage_parser(sub, _Parser)
    return parser


def _common(parser: argparse.ArgumentParser, *, json_flag: bool) -> None:
    parser.add_argument("--config", type=Path, help="config file (default: imagegate.toml)")
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print one JSON document")


def main(argv: Sequence[str] | None = None) -> int:
    """The ``imagegate`` entry point."""
    install_log_redaction()
    console = Console()
    as_program = argv is None
    raw = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args([decode_arg(arg) for arg in raw])
    args.tune = lambda: None
    if as_program and args.command in TUNED_COMMANDS:
        args.tune = lambda: reexec_tuned(raw)  # the bytes as typed, not the decoded text
        if args.command not in ("generate", "edit"):  # these first check they can run at all
            args.tune()
    handler = {
        "generate": _generate,
        "edit": _edit,
        "serve": _serve,
        "worker": _worker,
        "providers": _providers,
        "history": _history,
        "doctor": _doctor,
        "models": _models,
        "config": run_config,
        "keys": keys_command,
        "usage": usage_command,
        "storage": storage_command,
    }[args.command]
    try:
        return handler(args, console)
    except ImagegateError as exc:
        if getattr(args, "json", False):  # a JSON reader gets a document even on failure
            console.json({"error": _error_json(exc)})
        console.error(str(exc))
        for attempt in exc.attempts:
            if attempt.error is not None:
                stage = f" [{attempt.error.stage}]" if attempt.error.stage else ""
                console.info(
                    f"  {attempt.provider}: {attempt.outcome}{stage} after "
                    f"{attempt.elapsed_s:.2f}s: {attempt.error.type}: {attempt.error.message}"
                )
        return exc.exit_code
    except KeyboardInterrupt:
        console.error("interrupted")
        return 130
    except StoppedBySignal as stopped:
        name = signal.Signals(stopped.signum).name
        console.error(f"stopped by {name}; the running job was cancelled upstream")
        return 128 + stopped.signum
    except Exception as exc:  # the one place that turns surprises into a line, not a traceback
        if os.environ.get("IMAGEGATE_DEBUG"):
            raise
        console.error(f"{type(exc).__name__}: {exc} (set IMAGEGATE_DEBUG=1 for a traceback)")
        return EXIT_ERROR


def decode_arg(arg: str) -> str:
    """An argument as the user typed it, whatever the locale.

    Python decodes argv with the locale's encoding; under ``LC_ALL=C`` (UTF-8 mode off) the
    bytes of "à" or "✔" arrive as surrogate escapes. They are turned back into those bytes
    and decoded as UTF-8, with U+FFFD only where the bytes are not UTF-8.
    """
    if not any("\udc80" <= char <= "\udcff" for char in arg):
        return arg
    return arg.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class StoppedBySignal(Exception):
    """``generate`` got SIGTERM or SIGHUP: the job was cancelled (upstream too), as on Ctrl-C;
    the process exits with 128 + the signal's number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)


def _error_json(exc: ImagegateError) -> dict[str, Any]:
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "field": getattr(exc, "field", None),
        "limit": getattr(exc, "limit", None),
        "fix": exc.fix,
        "attempts": [a.model_dump() for a in exc.attempts],
    }


def _generation_args(gen: argparse.ArgumentParser) -> None:
    """The flags ``generate`` and ``edit`` share."""
    gen.add_argument("--negative", default="", help="negative prompt")
    gen.add_argument("--size", help="WIDTHxHEIGHT, e.g. 512x512 (multiples of 8)")
    gen.add_argument("--steps", type=int, help="sampling steps (1-150); default: the provider's")
    gen.add_argument("--guidance", type=float, help="CFG scale (0-30); default: the provider's")
    gen.add_argument("--seed", type=int, help="seed (0 to 2^32-1); default: random")
    gen.add_argument("-n", type=int, default=1, help="number of images (1-8)")
    gen.add_argument("--sampler", help='AUTOMATIC1111 sampler name, e.g. "Euler a"')
    gen.add_argument(
        "--scheduler", help='AUTOMATIC1111 scheduler, e.g. "karras"; default: automatic'
    )
    gen.add_argument("--route", help="a named route ([routes.NAME]); default: [gateway] route")
    gen.add_argument("--provider", help="use only this provider")
    gen.add_argument("--model", help="a provider's model, or a provider or route name")
    gen.add_argument("--out", type=Path, help="output file (or folder when -n > 1)")
    _common(gen, json_flag=True)


def _edit(args: argparse.Namespace, console: Console) -> int:
    """``imagegate edit IMAGE PROMPT``: ``generate`` with the image, and the mask when given."""
    image = InputImage.from_bytes(_read_input(args.image, "IMAGE"), field="IMAGE")
    inputs: dict[str, Any] = {"images": (image,), "strength": args.strength}
    if args.mask is not None:
        given = InputImage.from_bytes(_read_input(args.mask, "--mask"), field="--mask")
        inputs["mask"] = normalize_mask(given, image, convention="white", field="--mask")
    if args.mask_blur is not None:
        inputs["mask_blur"] = args.mask_blur
    return _generate(args, console, **inputs)


def _read_input(path: Path, field: str) -> bytes:
    """The bytes of an input image file; InvalidRequest naming ``field`` when unreadable."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidRequest(
            f"{field}: cannot read {path}: {exc.strerror or exc}",
            field=field,
            limit="a readable image file",
            fix="Check the path and try again.",
        ) from None


def _generate(args: argparse.Namespace, console: Console, **inputs: Any) -> int:
    fields: dict[str, Any] = {
        **inputs,
        "prompt": args.prompt,
        "negative_prompt": args.negative,
        "steps": args.steps,
        "guidance": args.guidance,
        "seed": args.seed,
        "n": args.n,
        "sampler": args.sampler,
        "scheduler": args.scheduler,
        "provider": args.provider,
        "route": args.route,
        "model": args.model,
        **(parse_size(args.size, field="--size") if args.size is not None else {}),
    }
    request = ImageRequest.parse({k: v for k, v in fields.items() if v is not None})
    settings = load_config(args.config)
    from imagegate.gateway import Gateway

    gateway = Gateway(settings)
    gateway.preflight(request)  # a model not here fails now: no store, no torch, no re-exec
    args.tune()
    result = asyncio.run(_run_generate(gateway, request, console))
    if args.out is not None:
        _write_out(result, args.out)
    if args.json:
        console.json(result.summary())
        return EXIT_OK
    for attempt in result.attempts:
        if attempt.outcome != "ok" and attempt.error is not None:
            stage = f" [{attempt.error.stage}]" if attempt.error.stage else ""
            console.info(
                f"{attempt.provider}: {attempt.outcome}{stage}: {attempt.error.type}: "
                f"{attempt.error.message}"
            )
    for image in result.images:
        console.line(f"{image.path}  seed={image.seed}  {image.width}x{image.height}")
    console.info(f"{result.provider} ({result.model}) in {result.elapsed_s:.2f}s")
    return EXIT_OK


async def _run_generate(gateway: Gateway, request: ImageRequest, console: Console) -> ImageResult:
    """Generate, cancelling the job (and so the upstream one) on SIGTERM or SIGHUP as
    Ctrl-C does; then StoppedBySignal."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    received: list[int] = []

    def stop(signum: int) -> None:
        if not received:
            received.append(signum)
            task.cancel()

    installed = []
    for sig in _STOP_SIGNALS:
        try:
            loop.add_signal_handler(sig, stop, int(sig))
        except (NotImplementedError, RuntimeError):  # not on this platform or thread
            continue
        installed.append(sig)
    try:
        return await _generate_with_progress(gateway, request, console)
    except asyncio.CancelledError:
        if received:
            raise StoppedBySignal(received[0]) from None
        raise
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def _generate_with_progress(
    gateway: Gateway, request: ImageRequest, console: Console
) -> ImageResult:
    with console.progress("generating") as bar:
        task = bar.task_ids[0]

        def on_step(step: Progress) -> None:
            bar.update(task, total=step.steps, completed=step.step, description="denoising")

        async with gateway:
            return await gateway.generate(request, progress=on_step, source="cli")


def _write_out(result: ImageResult, out: Path) -> None:
    """Copy the stored images to ``out`` (a file, or a folder when there are several)."""
    if len(result.images) == 1 and out.suffix:
        targets = [out]
    else:
        out.mkdir(parents=True, exist_ok=True)
        targets = [out / f"image-{i + 1}-seed{img.seed}.png" for i, img in enumerate(result.images)]
    for image, target in zip(result.images, targets, strict=True):
        target.parent.mkdir(parents=True, exist_ok=True)
        if image.path is not None:
            shutil.copyfile(image.path, target)
        else:
            target.write_bytes(image.png)
        image.path = str(target.resolve())


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"must be a port number between 1 and 65535; got {text!r}")
    return int(text)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _serve(args: argparse.Namespace, console: Console) -> int:
    from imagegate.server.auth import keys_from_env

    settings = load_config(args.config)
    keys_env = settings.server.api_keys_env
    auth = bool(keys_from_env(keys_env))
    if not auth and not _is_loopback(args.host):
        raise ConfigError(
            f"refusing to listen on {args.host} without API keys; set {keys_env} to one or "
            "more comma-separated keys, or bind 127.0.0.1",
            key="--host",
        )
    import uvicorn

    from imagegate.server import create_app
    from imagegate.server.connections import uvicorn_config

    app = create_app(settings)
    console.info(
        f"imagegate on http://{args.host}:{args.port} (auth {'on' if auth else 'off'}, "
        f"route {', '.join(settings.gateway.route)}, data {settings.data_dir})"
    )
    server = uvicorn.Server(uvicorn_config(app, settings.server, args.host, args.port))
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        sys.exit(3)  # uvicorn's STARTUP_FAILURE: the port was taken or the app failed to start
    return EXIT_OK


def _worker(args: argparse.Namespace, console: Console) -> int:
    settings = load_config(args.config)
    if not settings.scale.backplane:
        raise ConfigError(
            "a worker needs the shared database: set [scale] backplane = "
            '"postgresql://..." in the config',
            file=settings.source,
            key="scale.backplane",
        )
    from imagegate.server import run_worker

    console.info(f"imagegate worker for queue {args.queue} (data {settings.data_dir})")
    asyncio.run(run_worker(settings, args.queue))
    return EXIT_OK


def _providers(args: argparse.Namespace, console: Console) -> int:
    from imagegate.router import configured_timeouts

    settings = load_config(args.config)
    types = provider_types()
    # Scaled out, the replicas share their breakers in the database: show those. A single
    # server keeps its breakers in memory (GET /v1/providers); this process has tripped none.
    shared = asyncio.run(_shared_breakers(settings)) if settings.scale.backplane else {}
    rows: list[dict[str, Any]] = [
        {
            "name": name,
            "type": cfg.type,
            "origin": types[cfg.type].origin,
            "model": getattr(cfg, "model", None),
            "paid": cfg.paid,
            "enabled": cfg.enabled,
            "route_position": (
                settings.gateway.route.index(name) + 1 if name in settings.gateway.route else None
            ),
            "breaker": shared.get(name, "closed"),
            "timeouts": configured_timeouts(cfg),
            "learned": [],
        }
        for name, cfg in settings.providers.items()
    ]
    if args.json:
        console.json({"route": settings.gateway.route, "providers": rows})
        return EXIT_OK
    console.table(
        ["name", "type", "origin", "model", "paid", "route", "breaker", "first byte"],
        [
            [
                str(r["name"]),
                str(r["type"]),
                str(r["origin"]),
                str(r["model"] or "-"),
                "yes" if r["paid"] else "no",
                str(r["route_position"] or "-"),
                str(r["breaker"]),
                _seconds(r["timeouts"]["first_byte_s"]),
            ]
            for r in rows
        ],
    )
    console.info(
        "first byte: the configured first_byte_timeout_s. What the router learns (p50 / p95 / "
        "p99 per request shape, learned hedge delays and first-byte limits) lives in each "
        "server process: GET /v1/providers, or GET /v1/providers?doctor=true for the doctor's "
        "view of it."
    )
    return EXIT_OK


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:g} s"


async def _shared_breakers(settings: Settings) -> dict[str, str]:
    """Each provider's breaker state as the scaled-out replicas last saved it."""
    from imagegate.backplane.pgbus import PostgresBreakerStore
    from imagegate.backplane.postgres import shared_store

    store = shared_store(settings)
    await store.open()
    try:
        saved = await PostgresBreakerStore(store).load()
    finally:
        await store.close()
    return {name: snapshot.state for name, snapshot in saved.items()}


def _doctor(args: argparse.Namespace, console: Console) -> int:
    from imagegate import doctor

    settings = load_config(args.config)
    encoding = getattr(console.stdout, "encoding", None)
    report = asyncio.run(
        doctor.run_doctor(settings, args.names, generate=args.generate, stdout_encoding=encoding)
    )
    if args.json:
        console.json(report.to_json())
    else:
        for line in doctor.format_text(report):
            console.line(line)
    return EXIT_OK if report.ok else EXIT_FAILED


def _history(args: argparse.Namespace, console: Console) -> int:
    from imagegate.store import Store

    if getattr(args, "history_command", None) == "prune":
        return prune_command(args, console)
    if args.limit < 1 or args.limit > 1000:
        raise InvalidRequest(
            f"--limit: must be between 1 and 1000; got {args.limit}", field="limit"
        )
    settings = load_config(args.config)

    async def fetch() -> list[Any]:
        async with Store(settings.data_dir, storage=settings.storage) as store:
            return list(await store.list_jobs(limit=args.limit))

    jobs = asyncio.run(fetch())
    if args.json:
        console.json([job.model_dump(mode="json") for job in jobs])
        return EXIT_OK
    console.table(
        ["created", "status", "provider", "seed", "prompt", "image"],
        [
            [
                job.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                job.status,
                job.provider or "-",
                str(job.seed if job.seed is not None else "-"),
                _clip(job.request.get("prompt", ""), 40),
                job.images[0].path if job.images else (job.error or {}).get("type", "-"),
            ]
            for job in jobs
        ],
    )
    return EXIT_OK


def _models(args: argparse.Namespace, console: Console) -> int:
    from imagegate import hubcache

    if args.models_command == "pull":
        # The hub client draws a byte-level progress bar per file on stderr.
        path = hubcache.pull(args.model, progress=console.info)
        console.line(f"{args.model}: {path}")
        return EXIT_OK
    cached = hubcache.list_cached()
    if args.json:
        console.json([{**dataclasses.asdict(m), "path": str(m.path)} for m in cached])
        return EXIT_OK
    console.table(
        ["model", "size", "pipeline", "path"],
        [
            [
                m.repo_id,
                f"{m.size_bytes / 1e9:.2f} GB",
                "yes" if m.is_pipeline else "no",
                str(m.path),
            ]
            for m in cached
        ],
    )
    return EXIT_OK


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _version() -> str:
    from imagegate import __version__

    return __version__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
