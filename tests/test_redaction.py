"""One redaction step: no secret the process holds leaks through an upstream's error fields,
whole, base64-encoded or cut, into answers, events, the database, the breaker or the log."""

from __future__ import annotations

import base64
import logging
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from faults import serve_app
from serverkit import live

from imagegate.config import parse_settings
from imagegate.errors import UpstreamError
from imagegate.redaction import redact, remember

CANARY_ENV = "IMAGEGATE_TEST_CANARY_KEY"


def _fragments(secret: str, size: int = 12) -> list[str]:
    return [secret[i : i + size] for i in range(len(secret) - size + 1)]


def _leaks(text: str, secret: str) -> bool:
    return any(piece in text for piece in _fragments(secret))


def test_a_remembered_secret_is_replaced_whole_base64_and_cut() -> None:
    """A remembered value goes in clear, as Basic base64, and as a start cut at the text's end."""
    secret = "user:" + secrets.token_hex(16)
    remember(secret)
    basic = base64.b64encode(secret.encode()).decode()
    assert secret not in redact(f"echo {secret} back")
    assert basic not in redact(f"Authorization was {basic}")
    assert not _leaks(redact(("x" * 30 + secret)[:40]), secret)


def test_an_error_message_is_redacted_when_the_error_is_made() -> None:
    """An UpstreamError quoting a remembered key, and its fix, hold no trace of it."""
    key = "k" + secrets.token_hex(20)
    remember(key)
    error = UpstreamError(f"upstream said {key}", fix=f"do not send {key[:15]}", provider="p")
    assert not _leaks(str(error) + str(error.fix) + str(error.to_dict()), key)


def _echoing_upstream() -> FastAPI:
    """An OpenAI-compatible upstream that echoes the presented key in every error field."""
    app = FastAPI()

    def echo(request: Request, status: int) -> JSONResponse:
        key = request.headers.get("authorization", "").removeprefix("Bearer ")
        error: dict[str, Any] = {
            "message": "x" * 185 + f" your key {key} was used; auth {key}",
            "type": key,
            "param": key,
            "code": key,
        }
        return JSONResponse({"error": error}, status)

    @app.post("/v1/images/generations")
    async def generations(request: Request) -> JSONResponse:
        body = await request.json()
        return echo(request, 500 if "fail" in body["prompt"] else 400)

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        return echo(request, 401)

    return app


def test_a_key_the_upstream_echoes_in_every_error_field_is_never_stored_shown_or_logged(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Sync answers, jobs, events, /v1/providers, the database files and the log stay clean."""
    canary = "canary" + secrets.token_hex(16)  # not shaped like any known key format
    monkeypatch.setenv(CANARY_ENV, canary)
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    with serve_app(_echoing_upstream()) as upstream:
        settings = parse_settings(
            {
                "gateway": {"route": ["oai"], "max_attempts": 1},
                "providers": {
                    "oai": {"type": "openai", "url": f"{upstream}/v1", "api_key_env": CANARY_ENV}
                },
            }
        )
        with live(settings) as server:
            body = {"prompt": "a fox", "size": "64x64"}
            seen.append(httpx.post(f"{server.url}/v1/images/generations", json=body).text)
            body["prompt"] = "fail please"
            seen.append(httpx.post(f"{server.url}/v1/images/generations", json=body).text)
            job = httpx.post(f"{server.url}/v1/jobs", json={"prompt": "fail again"}).json()
            for _ in range(100):  # bounded: 5 s
                state = httpx.get(f"{server.url}/v1/jobs/{job['id']}")
                if state.json()["status"] not in ("queued", "running"):
                    break
                time.sleep(0.05)
            seen.append(state.text)
            seen.append(httpx.get(f"{server.url}/v1/jobs/{job['id']}/events").text)
            seen.append(httpx.get(f"{server.url}/v1/jobs").text)
            seen.append(httpx.get(f"{server.url}/v1/providers").text)
            seen.append(httpx.get(f"{server.url}/sdapi/v1/progress").text)
    stored = b"".join(p.read_bytes() for p in (isolated_env / "data").rglob("*") if p.is_file())
    assert "failed" in seen[2]
    assert not _leaks("\n".join(seen), canary)
    assert not _leaks(stored.decode("latin-1"), canary)
    assert not _leaks(caplog.text, canary)
