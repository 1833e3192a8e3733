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

    python benchmarks/failover.py [--litellm-python /tmp/litellm-venv/bin/python] [-n 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import ssl
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import trustme

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from faults import Behaviour, Conn, FaultServer, hang, hold, respond, serve_app  # noqa: E402
from vendor_openai import OpenAIFake  # noqa: E402

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
    hedged = ours["hang_hedged"]
    if "hang" in theirs and theirs["hang"]["first_ms"]:
        out["hang_hedged"] = {
            "imagegate_first_ms": hedged["first_ms"],
            "speedup_first": round(theirs["hang"]["first_ms"] / hedged["first_ms"], 1),
        }
    return out


if __name__ == "__main__":
    main()
