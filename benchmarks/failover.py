"""Failover: imagegate's Gateway vs LiteLLM's Router vs the healthy upstream alone.

Prints ONE JSON document. Everything binds 127.0.0.1. For each broken primary (a TLS
handshake that never finishes, a server that reads the request and never answers, a server
answering 500) both gateways route ``primary -> backup`` against the same loopback servers in
the same run, sending ``--requests`` sequential requests after one warm-up request to the
backup. Measured: time to the first good image, p50 / max of the 2nd..Nth, how many of
those were slow (> 1 s), and the connections that reached the broken primary (counted at
the fault server, each stamped and assigned to the request that was running).

LiteLLM runs ``litellm.Router`` (Python API) in its own venv, as a subprocess running a
script this benchmark writes to a temp file, with the fastest failover config of
shared/litellm-baseline.md: a 3 s primary timeout, ``max_retries: 0``, ``fallbacks``,
``num_retries: 0``, ``allowed_fails: 0``, ``cooldown_time: 30``. ``--litellm-python PATH`` or
``LITELLM_PYTHON`` names that venv's python; without one LiteLLM is skipped with a note.

imagegate runs with its defaults (hedge_connect_after_s 0.5, tls_timeout_s 2, ...), except
that the primary gets the same 3 s attempt budget as LiteLLM's (``timeout_s = 3``; the default
first-byte budget of a synchronous image API is 120 s) and ``paid = false``: imagegate never
resends a request that a paid provider may have billed, so a hung *paid* primary fails with
that reason instead; the ``hang_paid`` row shows it. ``hang_hedged`` adds request hedging
(``hedge_after_s = 0.5``; it races unpaid providers only, so there the backup is unpaid too).

Two scenarios measure what the router learns (imagegate.latency, imagegate.hedging,
imagegate.breaker), against LiteLLM in the same run (its scripts run in a subprocess at the
same time as imagegate's, each against its own fault server):

- ``hang_spread``: the primary's image endpoint hangs while ``GET /v1/models`` answers (an
  overloaded upstream, a wedged queue); one request every ``--interval-s`` (2 s) for
  ``--spread-s`` (120 s). Reported: the fraction of requests that paid the hang (took longer
  than ``slow_s``; the backup answers in milliseconds). Same primary timeout as above (3 s).
- ``known_latency``: the primary answers images in 1.0 +- 0.2 s for 50 requests, then hangs.
  imagegate runs with its defaults (``first_byte_timeout_s`` = 120, no ``timeout_s``; the
  primary unpaid); reported: the time to the first good image after the hang starts, with an
  unpaid backup (learned hedging at the p95) and with a paid one (no hedging: learned hang
  detection at 2x the first-byte p99). LiteLLM keeps its 3 s primary timeout.

    python benchmarks/failover.py [--litellm-python /tmp/litellm-venv/bin/python] [-n 20]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import platform
import random
import ssl
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import trustme

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from faults import (  # noqa: E402
    Behaviour,
    Conn,
    FaultServer,
    Reply,
    Request,
    hang,
    hang_where,
    head,
    hold,
    respond,
    serve_app,
)
from vendor_openai import OpenAIFake, tiny_png  # noqa: E402

from imagegate.config import Settings  # noqa: E402
from imagegate.errors import ImagegateError  # noqa: E402
from imagegate.gateway import Gateway  # noqa: E402
from imagegate.providers.openai import OpenAIConfig, OpenAIProvider  # noqa: E402
from imagegate.request import ImageRequest  # noqa: E402

PROMPT = "a lighthouse at dusk"
KEY_ENV = "IMAGEGATE_BENCH_KEY"
PRIMARY_TIMEOUT_S = 3.0
SLOW_S = 1.0
FAULTS = ("tls_stall", "hang", "500")
ERROR_500 = {"error": {"message": "The server had an error", "type": "server_error"}}

LITELLM_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys, time
    import litellm

    litellm.telemetry = False
    litellm.drop_params = True
    spec = json.loads(sys.argv[1])
    KEY = "sk-bench-not-a-real-key"

    def deployment(name, base, timeout, retries=None):
        params = {"model": "openai/fake", "api_base": base, "api_key": KEY, "timeout": timeout}
        if retries is not None:
            params["max_retries"] = retries
        return {"model_name": name, "litellm_params": params,
                "model_info": {"mode": "image_generation"}}

    async def scenario(name, primary_url):
        router = litellm.Router(
            model_list=[
                deployment("backup", spec["backup"] + "/v1", 30),
                deployment("primary", primary_url + "/v1", spec["timeout_s"], retries=0),
            ],
            fallbacks=[{"primary": ["backup"]}],
            num_retries=0,
            timeout=30,
            allowed_fails=0,
            cooldown_time=30,
        )
        await router.aimage_generation(model="backup", prompt=spec["prompt"], size="64x64")
        rows = []
        for _ in range(spec["n"]):
            start = time.time()
            t0 = time.perf_counter()
            try:
                out = await router.aimage_generation(
                    model="primary", prompt=spec["prompt"], size="64x64"
                )
                ok, err = bool(out.data), None
            except Exception as exc:
                ok, err = False, type(exc).__name__
            rows.append({"start": start, "end": time.time(),
                         "s": time.perf_counter() - t0, "ok": ok, "error": err})
        return rows

    async def main():
        out = {}
        for name, url in spec["primaries"].items():
            out[name] = await scenario(name, url)
        print(json.dumps({"version": litellm.__version__ if hasattr(litellm, "__version__")
                          else None, "scenarios": out}))

    asyncio.run(main())
    """
)


LITELLM_LEARNING_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys, time
    import litellm

    litellm.telemetry = False
    litellm.drop_params = True
    spec = json.loads(sys.argv[1])
    KEY = "sk-bench-not-a-real-key"

    def deployment(name, base, timeout, retries=None):
        params = {"model": "openai/fake", "api_base": base, "api_key": KEY, "timeout": timeout}
        if retries is not None:
            params["max_retries"] = retries
        return {"model_name": name, "litellm_params": params,
                "model_info": {"mode": "image_generation"}}

    async def case(primary_url, n, interval_s):
        router = litellm.Router(
            model_list=[
                deployment("backup", spec["backup"] + "/v1", 30),
                deployment("primary", primary_url + "/v1", spec["timeout_s"], retries=0),
            ],
            fallbacks=[{"primary": ["backup"]}],
            num_retries=0,
            timeout=30,
            allowed_fails=0,
            cooldown_time=30,
        )
        await router.aimage_generation(model="backup", prompt=spec["prompt"], size="64x64")
        rows = []
        began = time.perf_counter()
        for i in range(n):
            await asyncio.sleep(max(0.0, began + i * interval_s - time.perf_counter()))
            t0 = time.perf_counter()
            try:
                out = await router.aimage_generation(
                    model="primary", prompt=spec["prompt"], size="64x64"
                )
                ok, err = bool(out.data), None
            except Exception as exc:
                ok, err = False, type(exc).__name__
            rows.append({"s": time.perf_counter() - t0, "ok": ok, "error": err})
        return rows

    async def main():
        out = {}
        for name, c in spec["cases"].items():
            out[name] = await case(c["url"], c["n"], c["interval_s"])
        print(json.dumps({"cases": out}))

    asyncio.run(main())
    """
)


class Stamped:
    """A behaviour wrapper that records when each connection reached the fault server."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.stamps: list[float] = []

    def __call__(self, conn: Conn) -> None:
        self.stamps.append(time.time())
        self.behaviour(conn)


@contextlib.contextmanager
def primary(kind: str, tls: ssl.SSLContext) -> Iterator[tuple[str, Stamped]]:
    """A broken primary of ``kind``: its URL and its connection stamps."""
    behaviours = {"tls_stall": hold(), "hang": hang(), "500": respond(500, body=ERROR_500)}
    stamped = Stamped(behaviours[kind])
    server = FaultServer(stamped, tls=tls if kind == "tls_stall" else None).start()
    try:
        yield server.url, stamped
    finally:
        server.stop()


def summarize(rows: list[dict[str, Any]], stamps: list[float]) -> dict[str, Any]:
    """The figures of one scenario from its per-request rows and the primary's stamps."""
    per_request = [
        sum(1 for s in stamps if row["start"] <= s <= row["end"] + 0.001) for row in rows
    ]
    rest = [row["s"] for row in rows[1:]]
    ok_first = rows[0]["ok"] if rows else False
    return {
        "ok": sum(1 for row in rows if row["ok"]),
        "sent": len(rows),
        "first_ms": round(rows[0]["s"] * 1000, 1) if rows else None,
        "first_ok": ok_first,
        "first_error": rows[0].get("error") if rows else None,
        "rest_p50_ms": round(statistics.median(rest) * 1000, 1) if rest else None,
        "rest_max_ms": round(max(rest) * 1000, 1) if rest else None,
        "rest_slow": sum(1 for s in rest if s > SLOW_S),
        "primary_connections": len(stamps),
        "primary_connections_first": per_request[0] if per_request else 0,
        "primary_connections_rest": sum(per_request[1:]),
        "primary_connections_per_request": round(len(stamps) / len(rows), 3) if rows else None,
    }


async def run_imagegate(
    kind: str,
    backup: str,
    tls: ssl.SSLContext,
    n: int,
    *,
    paid: bool = False,
    backup_paid: bool = True,
    **gateway: Any,
) -> dict[str, Any]:
    """n requests through a Gateway whose route is [primary (broken), backup]."""
    with primary(kind, tls) as (url, stamped):
        providers = {
            "primary": OpenAIProvider(
                "primary",
                OpenAIConfig(
                    url=f"{url}/v1",
                    api_key_env=KEY_ENV,
                    paid=paid,
                    timeout_s=PRIMARY_TIMEOUT_S,
                ),
            ),
            "backup": OpenAIProvider(
                "backup", OpenAIConfig(url=f"{backup}/v1", api_key_env=KEY_ENV, paid=backup_paid)
            ),
        }
        settings = Settings.model_validate({"gateway": {"route": ["primary", "backup"], **gateway}})
        rows: list[dict[str, Any]] = []
        async with Gateway(settings, store=False, providers=providers) as gw:
            await gw.generate(ImageRequest(prompt=PROMPT, provider="backup"))
            for _ in range(n):
                start, t0 = time.time(), time.perf_counter()
                try:
                    result = await gw.generate(ImageRequest(prompt=PROMPT, width=64, height=64))
                except ImagegateError as exc:
                    row = {"ok": False, "error": type(exc).__name__}
                else:
                    row = {"ok": True, "error": None, "provider": result.provider}
                row.update(start=start, end=time.time(), s=time.perf_counter() - t0)
                rows.append(row)
        summary = summarize(rows, stamped.stamps)
        summary["served_by_backup"] = sum(1 for r in rows if r.get("provider") == "backup")
        return summary


async def run_direct(backup: str, n: int) -> dict[str, Any]:
    """The healthy upstream alone: one httpx client, a warm-up, then n requests."""
    body = {"prompt": PROMPT, "size": "64x64", "n": 1}
    times = []
    async with httpx.AsyncClient(base_url=f"{backup}/v1") as client:
        (await client.post("/images/generations", json=body)).raise_for_status()
        for _ in range(n):
            t0 = time.perf_counter()
            (await client.post("/images/generations", json=body)).raise_for_status()
            times.append(time.perf_counter() - t0)
    return {
        "first_ms": round(times[0] * 1000, 2),
        "rest_p50_ms": round(statistics.median(times[1:]) * 1000, 2),
    }


def run_litellm(
    python: str, backup: str, tls: ssl.SSLContext, n: int, work: Path
) -> dict[str, Any]:
    """LiteLLM's Router in its own venv, against fresh broken primaries of each kind."""
    script = work / "litellm_failover.py"
    script.write_text(LITELLM_SCRIPT)
    with contextlib.ExitStack() as stack:
        servers = {kind: stack.enter_context(primary(kind, tls)) for kind in FAULTS}
        spec = {
            "backup": backup,
            "primaries": {kind: url for kind, (url, _) in servers.items()},
            "timeout_s": PRIMARY_TIMEOUT_S,
            "n": n,
            "prompt": PROMPT,
        }
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
        proc = subprocess.run(
            [python, str(script), json.dumps(spec)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
            check=False,
        )
        if proc.returncode != 0:
            return {"error": proc.stderr[-2000:]}
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        scenarios = {
            kind: summarize(rows, servers[kind][1].stamps)
            for kind, rows in out["scenarios"].items()
        }
    return {"version": out.get("version"), "scenarios": scenarios}


# --------------------------------------------------------------------------- what it learns


def openai_answer(request: Request) -> Reply:
    """A raw-socket OpenAI images API: the model list and one tiny image."""
    if request.path.endswith("/models"):
        return Reply.json({"object": "list", "data": [{"id": "dall-e-2", "object": "model"}]})
    image = base64.b64encode(tiny_png()).decode()
    return Reply.json({"created": int(time.time()), "data": [{"b64_json": image}]})


def is_image(request: Request) -> bool:
    return request.path.endswith("/images/generations")


class KnownLatency:
    """Images in ``mean_s`` +- ``spread_s`` (uniform) for ``good`` requests, then a hang."""

    def __init__(self, good: int, mean_s: float = 1.0, spread_s: float = 0.2) -> None:
        self.good = good
        self.mean_s = mean_s
        self.spread_s = spread_s
        self.served = 0
        self._rand = random.Random(15)
        self._lock = threading.Lock()

    def __call__(self, conn: Conn) -> None:
        request = conn.read_request()
        if request is None:
            return
        if is_image(request):
            with self._lock:
                index = self.served
                self.served += 1
                delay = self.mean_s + self._rand.uniform(-self.spread_s, self.spread_s)
            if index >= self.good:
                conn.wait()
            conn.wait(delay)
        reply = openai_answer(request)
        conn.send(head(reply.status, reply.headers, len(reply.body)) + reply.body)


def learning_gateway(
    url: str, backup: str, *, primary: dict[str, Any], backup_paid: bool
) -> Gateway:
    providers = {
        "primary": OpenAIProvider(
            "primary", OpenAIConfig(url=f"{url}/v1", api_key_env=KEY_ENV, **primary)
        ),
        "backup": OpenAIProvider(
            "backup", OpenAIConfig(url=f"{backup}/v1", api_key_env=KEY_ENV, paid=backup_paid)
        ),
    }
    settings = Settings.model_validate({"gateway": {"route": ["primary", "backup"]}})
    return Gateway(settings, store=False, providers=providers)


async def timed_rows(gw: Gateway, n: int, interval_s: float) -> list[dict[str, Any]]:
    """``n`` requests, one every ``interval_s`` (0: back to back), each timed."""
    rows: list[dict[str, Any]] = []
    began = time.perf_counter()
    for i in range(n):
        await asyncio.sleep(max(0.0, began + i * interval_s - time.perf_counter()))
        t0 = time.perf_counter()
        try:
            result = await gw.generate(ImageRequest(prompt=PROMPT, width=64, height=64))
        except ImagegateError as exc:
            row: dict[str, Any] = {"ok": False, "error": type(exc).__name__}
        else:
            row = {"ok": True, "provider": result.provider}
            notes = [a.note for a in result.attempts if a.note]
            if notes:
                row["notes"] = notes
        row["s"] = time.perf_counter() - t0
        rows.append(row)
    return rows


def spread_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    slow = [row for row in rows if row["s"] > SLOW_S]
    return {
        "sent": len(rows),
        "ok": sum(1 for row in rows if row["ok"]),
        "paid_the_hang": len(slow),
        "fraction_paid_the_hang": round(len(slow) / len(rows), 3) if rows else None,
        "slow_request_indexes": [i for i, row in enumerate(rows) if row["s"] > SLOW_S],
    }


async def run_spread(backup: str, n: int, interval_s: float) -> dict[str, Any]:
    """hang_spread: images hang, /models answers; one request every ``interval_s``."""
    with FaultServer(hang_where(is_image, openai_answer)) as server:
        primary = {"paid": False, "timeout_s": PRIMARY_TIMEOUT_S}
        async with learning_gateway(server.url, backup, primary=primary, backup_paid=True) as gw:
            await gw.generate(ImageRequest(prompt=PROMPT, provider="backup"))
            rows = await timed_rows(gw, n, interval_s)
            breaker = gw.router.breakers["primary"]
            summary = spread_summary(rows)
            summary["probe_kind"] = breaker.probe_kind
            summary["breaker_at_end"] = breaker.state
        summary["primary_image_requests"] = sum(1 for r in server.requests if is_image(r))
    return summary


async def run_known(backup: str, good: int, *, backup_paid: bool, after: int) -> dict[str, Any]:
    """known_latency: ``good`` images in 1.0 +- 0.2 s, then a hang; defaults everywhere."""
    behaviour = KnownLatency(good)
    with FaultServer(behaviour) as server:
        async with learning_gateway(
            server.url, backup, primary={"paid": False}, backup_paid=backup_paid
        ) as gw:
            await gw.generate(ImageRequest(prompt=PROMPT, provider="backup"))
            rows = await timed_rows(gw, good + after, 0.0)
            learned = gw.router.learned("primary")
    before, hung = rows[:good], rows[good:]
    return {
        "backup_paid": backup_paid,
        "learned": learned[0] if learned else None,
        "served_before_hang": sum(1 for r in before if r.get("provider") == "primary"),
        "first_after_hang_s": round(hung[0]["s"], 3),
        "first_after_hang_ok": hung[0]["ok"],
        "first_after_hang_provider": hung[0].get("provider"),
        "first_after_hang_notes": hung[0].get("notes"),
        "rest_after_hang_max_s": round(max(r["s"] for r in hung[1:]), 3) if hung[1:] else None,
        "target_s": 3.0,
        "meets_target": bool(hung[0]["ok"] and hung[0]["s"] <= 3.0),
    }


def start_litellm_learning(
    python: str, backup: str, spread: tuple[int, float], good: int, after: int, work: Path
) -> tuple[subprocess.Popen[str], contextlib.ExitStack]:
    """LiteLLM's runs of both learning scenarios, started now in a subprocess."""
    script = work / "litellm_learning.py"
    script.write_text(LITELLM_LEARNING_SCRIPT)
    stack = contextlib.ExitStack()
    hanging = stack.enter_context(FaultServer(hang_where(is_image, openai_answer)))
    known = stack.enter_context(FaultServer(KnownLatency(good)))
    spec = {
        "backup": backup,
        "timeout_s": PRIMARY_TIMEOUT_S,
        "prompt": PROMPT,
        "cases": {
            "hang_spread": {"url": hanging.url, "n": spread[0], "interval_s": spread[1]},
            "known_latency": {"url": known.url, "n": good + after, "interval_s": 0.0},
        },
    }
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
    proc = subprocess.Popen(
        [python, str(script), json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    return proc, stack


def finish_litellm_learning(
    proc: subprocess.Popen[str], stack: contextlib.ExitStack, good: int
) -> dict[str, Any]:
    with stack:
        out, err = proc.communicate(timeout=900)
    if proc.returncode != 0:
        return {"error": err[-2000:]}
    cases = json.loads(out.strip().splitlines()[-1])["cases"]
    hung = cases["known_latency"][good:]
    return {
        "hang_spread": spread_summary(cases["hang_spread"]),
        "known_latency": {
            "first_after_hang_s": round(hung[0]["s"], 3),
            "first_after_hang_ok": hung[0]["ok"],
            "rest_after_hang_max_s": round(max(r["s"] for r in hung[1:]), 3) if hung[1:] else None,
        },
    }


def litellm_version(python: str) -> str | None:
    proc = subprocess.run(
        [python, "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    return proc.stdout.strip() or None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--litellm-python", default=os.environ.get("LITELLM_PYTHON"))
    parser.add_argument("-n", "--requests", type=int, default=20)
    parser.add_argument("--spread-s", type=float, default=120.0, help="hang_spread duration")
    parser.add_argument("--interval-s", type=float, default=2.0, help="hang_spread interval")
    parser.add_argument("--known-good", type=int, default=50, help="known_latency: good images")
    args = parser.parse_args()
    os.environ.setdefault(KEY_ENV, "sk-bench-not-a-real-key")
    ca = trustme.CA()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(tls)
    python = args.litellm_python
    if python and not Path(python).exists():
        python = None
    n = args.requests
    report: dict[str, Any] = {
        "benchmark": "failover",
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "requests_per_scenario": n,
        "primary_timeout_s": PRIMARY_TIMEOUT_S,
        "slow_s": SLOW_S,
        "notes": [],
    }
    fake = OpenAIFake(step_s=0.0)
    with serve_app(fake.app()) as backup, tempfile.TemporaryDirectory() as tmp:
        report["direct"] = asyncio.run(run_direct(backup, n))
        spread = (max(1, round(args.spread_s / args.interval_s)), args.interval_s)
        good, after = args.known_good, 5
        learning = None
        if python is not None:
            learning = start_litellm_learning(python, backup, spread, good, after, Path(tmp))
        report["imagegate_learning"] = {
            "config": "defaults; hang_spread: primary timeout_s = 3, paid = false; "
            "known_latency: primary paid = false, first_byte_timeout_s = 120 (default), "
            "no timeout_s",
            "hang_spread": asyncio.run(run_spread(backup, *spread)),
            "known_latency_unpaid_backup": asyncio.run(
                run_known(backup, good, backup_paid=False, after=after)
            ),
            "known_latency_paid_backup": asyncio.run(
                run_known(backup, good, backup_paid=True, after=after)
            ),
        }
        if learning is not None:
            report["litellm_learning"] = finish_litellm_learning(*learning, good)
        ours: dict[str, Any] = {}
        for kind in FAULTS:
            ours[kind] = asyncio.run(run_imagegate(kind, backup, tls, n))
        ours["hang_hedged"] = asyncio.run(
            run_imagegate("hang", backup, tls, n, backup_paid=False, hedge_after_s=0.5)
        )
        ours["hang_paid"] = asyncio.run(run_imagegate("hang", backup, tls, 4, paid=True))
        report["imagegate"] = {
            "config": "defaults; primary timeout_s = 3, paid = false (hang_paid: paid = true; "
            "hang_hedged: hedge_after_s = 0.5 and an unpaid backup)",
            "scenarios": ours,
        }
        if python is None:
            report["notes"].append(
                "LiteLLM skipped: pass --litellm-python or set LITELLM_PYTHON to the python of "
                "a venv with litellm (python3 -m venv /tmp/litellm-venv && "
                "/tmp/litellm-venv/bin/pip install 'litellm[proxy]')"
            )
        else:
            theirs = run_litellm(python, backup, tls, n, Path(tmp))
            theirs["version"] = theirs.get("version") or litellm_version(python)
            theirs["config"] = (
                "Router: primary timeout 3, max_retries 0, fallbacks primary -> backup, "
                "num_retries 0, timeout 30, allowed_fails 0, cooldown_time 30"
            )
            report["litellm"] = theirs
    report["comparison"] = compare(report)
    print(json.dumps(report, indent=2))


def compare(report: dict[str, Any]) -> dict[str, Any]:
    """First-request speed-up over LiteLLM, and whether later requests paid for the primary."""
    ours = report["imagegate"]["scenarios"]
    theirs = report.get("litellm", {}).get("scenarios", {})
    out: dict[str, Any] = {}
    for kind in FAULTS:
        row: dict[str, Any] = {
            "imagegate_first_ms": ours[kind]["first_ms"],
            "imagegate_rest_slow": ours[kind]["rest_slow"],
            "imagegate_primary_connections_rest": ours[kind]["primary_connections_rest"],
        }
        if kind in theirs and theirs[kind]["first_ms"]:
            row["litellm_first_ms"] = theirs[kind]["first_ms"]
            row["speedup_first"] = round(theirs[kind]["first_ms"] / ours[kind]["first_ms"], 1)
            row["at_least_10x"] = row["speedup_first"] >= 10
        out[kind] = row
    learning = report["imagegate_learning"]
    theirs_learning = report.get("litellm_learning", {})
    spread = {"imagegate_fraction_paid_the_hang": learning["hang_spread"]["fraction_paid_the_hang"]}
    if "hang_spread" in theirs_learning:
        spread["litellm_fraction_paid_the_hang"] = theirs_learning["hang_spread"][
            "fraction_paid_the_hang"
        ]
    out["hang_spread"] = spread
    known = {
        "imagegate_unpaid_backup_s": learning["known_latency_unpaid_backup"]["first_after_hang_s"],
        "imagegate_paid_backup_s": learning["known_latency_paid_backup"]["first_after_hang_s"],
    }
    if "known_latency" in theirs_learning:
        known["litellm_s"] = theirs_learning["known_latency"]["first_after_hang_s"]
    out["known_latency_first_good_after_hang"] = known
    hedged = ours["hang_hedged"]
    if "hang" in theirs and theirs["hang"]["first_ms"]:
        out["hang_hedged"] = {
            "imagegate_first_ms": hedged["first_ms"],
            "speedup_first": round(theirs["hang"]["first_ms"] / hedged["first_ms"], 1),
        }
    return out


if __name__ == "__main__":
    main()
