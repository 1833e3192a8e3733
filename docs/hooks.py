"""MkDocs hooks: the pages generated from the code, so they can never drift from it.

- ``index.md``: README.md (its links into docs/ made relative to the site);
- ``reference/configuration.md``: every table and provider type, from the pydantic models;
- ``reference/cli.md``: every command and option, from the argparse parser;
- ``api/openapi.md`` and ``api/openapi.json``: every route, from the server's OpenAPI schema;
- ``troubleshooting/errors.md``: the error tree and the Space stages the doctor reads;
- ``troubleshooting/network.md``: the doctor's own cause and fix for each way a connection
  fails before TLS completes, produced by the doctor's code on example failures.

``pages()`` returns them all; the docs tests call it directly.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GENERATED = frozenset(
    {
        "index.md",
        "reference/configuration.md",
        "reference/cli.md",
        "api/openapi.md",
        "api/openapi.json",
        "troubleshooting/errors.md",
        "troubleshooting/network.md",
    }
)


def pages() -> dict[str, str]:
    """Every generated page, by its path under docs/."""
    generated = {
        "index.md": readme_page(),
        "reference/configuration.md": configuration_page(),
        "reference/cli.md": cli_page(),
        "api/openapi.md": openapi_page(),
        "api/openapi.json": json.dumps(openapi_schema(), indent=2),
        "troubleshooting/errors.md": errors_page(),
        "troubleshooting/network.md": network_page(),
    }
    assert set(generated) == GENERATED
    return generated


def on_files(files: Any, config: Any) -> Any:
    """Add the generated pages to the site (none of them exists on disk)."""
    from mkdocs.structure.files import File

    for path, content in pages().items():
        files.append(File.generated(config, path, content=content))
    return files


def readme_page() -> str:
    """The README, with ``docs/x.md`` links pointing at the site's pages.

    Generated pages (the references) do not exist on disk: they are known by name.
    """
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    text = re.sub(r"\]\(docs/", "](", text)
    # Files outside docs/ (CHANGELOG.md) are not pages of the site: keep their names as text.
    return re.sub(r"\[([^\]]+)\]\((?!https?://|#)([^)]+?\.md)\)", _outside, text)


def _outside(match: re.Match[str]) -> str:
    target = match.group(2)
    on_site = target in GENERATED or (ROOT / "docs" / target).is_file()
    return match.group(0) if on_site else f"`{target}`"


def configuration_page() -> str:
    """The configuration reference, from imagegate.config_keys."""
    from imagegate.config_keys import reference_markdown

    return reference_markdown()


def cli_page() -> str:
    """Every command of ``imagegate``, its usage, arguments and their help."""
    from imagegate.cli import build_parser

    out = [
        "# CLI reference",
        "",
        "<!-- Generated from imagegate.cli.build_parser() by docs/hooks.py. -->",
        "",
        "Exit codes: 0 ok, 2 invalid input or config (one line naming the field and the "
        "limit), 3 every provider failed (each attempt explained), 1 anything else.",
        "",
    ]
    for name, parser in _commands(build_parser()):
        out += [f"## `{name}`", ""]
        if parser.description or name == "imagegate":
            out += [parser.description or "", ""]
        out += ["```text", parser.format_usage().strip(), "```", ""]
        rows = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            flags = ", ".join(action.option_strings) or action.metavar or action.dest
            default = (
                ""
                if action.default in (None, False, "", argparse.SUPPRESS) or action.required
                else f"`{action.default}`"
            )
            rows.append(f"| `{flags}` | {action.help or ''} | {default} |")
        if rows:
            out += ["| argument | meaning | default |", "|---|---|---|", *rows, ""]
    return "\n".join(out)


def _commands(
    parser: argparse.ArgumentParser, name: str = "imagegate"
) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(name, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for sub_name, sub in action.choices.items():
                if sub.description is None and helps.get(sub_name):
                    sub.description = str(helps[sub_name])
                found += _commands(sub, f"{name} {sub_name}")
    return found


def openapi_schema() -> dict[str, Any]:
    """The schema ``GET /openapi.json`` serves, from an app on the built-in defaults."""
    from imagegate.config import parse_settings
    from imagegate.server import create_app

    schema: dict[str, Any] = create_app(parse_settings({})).openapi()
    return schema


def openapi_page() -> str:
    """Every operation: method, path, summary, request body and the statuses it answers."""
    schema = openapi_schema()
    out = [
        "# OpenAPI reference",
        "",
        "<!-- Generated from the server's OpenAPI schema by docs/hooks.py. -->",
        "",
        "The server serves this schema at `GET /openapi.json`; the same file is "
        "[here](openapi.json) for code generators (`openapi-python-client` works on it "
        "unchanged). Every error status has a JSON body naming what went wrong and how to fix "
        "it.",
        "",
    ]
    by_tag: dict[str, list[str]] = {}
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            statuses = ", ".join(sorted(op.get("responses", {})))
            body = op.get("requestBody", {}).get("content", {})
            ref = next(iter(body.values()), {}).get("schema", {}).get("$ref", "")
            body_name = f"`{ref.rsplit('/', 1)[-1]}`" if ref else ""
            row = (
                f"| `{method.upper()} {path}` | {op.get('summary', '')} | {body_name} | "
                f"{statuses} |"
            )
            by_tag.setdefault(_surface(path), []).append(row)
    for tag, rows in by_tag.items():
        out += [f"## {tag}", "", "| operation | what | body | statuses |", "|---|---|---|---|"]
        out += [*rows, ""]
    out += ["## Schemas", ""]
    for name, model in sorted(schema.get("components", {}).get("schemas", {}).items()):
        props = model.get("properties", {})
        if not props:
            continue
        out += [f"### `{name}`", "", (model.get("description") or "").strip(), ""]
        out += ["| field | type | meaning |", "|---|---|---|"]
        for field, prop in props.items():
            kind = prop.get("type") or " or ".join(
                str(v.get("type", v.get("$ref", "").rsplit("/", 1)[-1]))
                for v in prop.get("anyOf", [])
            )
            text = (prop.get("description") or "").replace("\n", " ").replace("|", "\\|")
            out.append(f"| `{field}` | {kind} | {text} |")
        out.append("")
    return "\n".join(out)


def _surface(path: str) -> str:
    if path.startswith("/sdapi"):
        return "AUTOMATIC1111"
    if path.startswith("/v1/jobs"):
        return "Jobs"
    if path.startswith("/v1/images/generations") or path == "/v1/models":
        return "OpenAI"
    if path.startswith("/v1/images"):
        return "Images"
    if path.startswith("/v1/providers"):
        return "Providers"
    return "Health and metrics"


def errors_page() -> str:
    """The error tree and the Space stages, from imagegate.errors and the gradio provider."""
    from imagegate import errors
    from imagegate.providers.gradio import BROKEN

    out = [
        "# Errors and Space stages",
        "",
        "<!-- Generated from imagegate.errors and imagegate.providers.gradio by docs/hooks.py. -->",
        "",
        "Every failure is one class of this tree. Each carries a `fix` sentence (in the JSON "
        "error bodies, job views, `--json` output and the doctor), and `stage` says where a "
        "provider failed: dns, connect, tls, first_byte, read, attempt, total, config, auth, "
        "api, runtime.",
        "",
        "| error | exit code | what it means |",
        "|---|---|---|",
    ]
    for name, cls in inspect.getmembers(errors, inspect.isclass):
        if issubclass(cls, errors.ImagegateError) and cls.__module__ == errors.__name__:
            doc = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
            parent = cls.__mro__[1].__name__
            out.append(f"| `{name}` ({parent}) | {cls.exit_code} | {doc} |")
    out += [
        "",
        "## Hugging Face Space stages",
        "",
        "The `gradio` provider reads a Space's runtime stage from the Hub before it calls it. "
        "A sleeping or starting Space is woken in the background and skipped meanwhile; these "
        "stages need someone to act, and the doctor names them at its `runtime` stage:",
        "",
        "| stage | what to do |",
        "|---|---|",
        *(f"| `{stage}` | {what} |" for stage, what in BROKEN.items()),
        "",
    ]
    return "\n".join(out)


def network_page() -> str:
    """The doctor's cause and fix for each dns, connect and tls failure, as it words them."""
    import asyncio
    import socket

    # _advice is where the doctor words a dns/connect/tls failure; it is called here with no
    # network access needed (the certificate cases, which fetch the certificate, are left out).
    from imagegate.doctor.network import Target, _advice
    from imagegate.errors import ConnectError, ProviderError, Timeout
    from imagegate.transport import StageBudgets, StageTimings

    def target(proxy: str | None = None) -> Target:
        budgets = StageBudgets(dns_s=2.0, connect_s=2.0, tls_s=2.0, first_byte_s=120, read_s=30)
        return Target("NAME", "https://HOST", "https", "HOST", 443, budgets, None, proxy)

    def caused(exc: ProviderError, cause: BaseException) -> ProviderError:
        exc.__cause__ = cause
        return exc

    refused = ConnectionRefusedError(111, "Connection refused")
    unknown = socket.gaierror(-2, "Name or service not known")
    cases: list[tuple[str, ProviderError, str | None]] = [
        ("DNS too slow", Timeout("dns timed out", stage="dns", elapsed_s=2.0), None),
        (
            "unknown host",
            caused(ConnectError("no host", stage="dns", elapsed_s=0.01), unknown),
            None,
        ),
        ("no TCP answer", Timeout("connect timed out", stage="connect", elapsed_s=2.0), None),
        (
            "refused",
            caused(ConnectError("refused", stage="connect", elapsed_s=0.001), refused),
            None,
        ),
        (
            "proxy refuses",
            ConnectError("proxy said 403", stage="connect", elapsed_s=0.01),
            "http://proxy.internal:3128",
        ),
        ("TLS stall", Timeout("tls timed out", stage="tls", elapsed_s=2.0), None),
        (
            "not TLS",
            caused(ConnectError("wrong version number", stage="tls", elapsed_s=0.01), OSError()),
            None,
        ),
    ]
    out = [
        "# Connection failures: the doctor's words",
        "",
        "<!-- Generated by docs/hooks.py: the doctor's own code (imagegate.doctor.network) "
        "run on example failures of a provider NAME at https://HOST, with the default "
        "budgets of 2 s. -->",
        "",
        "What `imagegate doctor` prints when a provider's connection fails before any HTTP, "
        "produced by the doctor's code itself on example failures (provider `NAME` at "
        "`https://HOST`, default budgets). Your report names your host, port and numbers. "
        "Certificate problems (untrusted CA, wrong name, expired, an intercepting proxy) need "
        "the server's certificate to word, and are described in "
        "[the troubleshooting guide](index.md#tls).",
        "",
        "| situation | stage | cause | fix |",
        "|---|---|---|---|",
    ]
    tcp = StageTimings("HOST", 443, dns_s=0.012, connect_s=0.031)
    for label, exc, proxy in cases:
        stage = str(exc.stage)
        cause, fix, _ = asyncio.run(_advice(exc, stage, target(proxy), tcp))
        out.append(f"| {label} | `{stage}` | {_cell(cause)} | {_cell(fix)} |")
    out.append("")
    return "\n".join(out)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
