"""imagegate serve vs the LiteLLM proxy vs direct, against one fake OpenAI images upstream.

Prints ONE JSON document. Everything binds 127.0.0.1. Measured: added p50 and p99 at c=1
(0 ms upstream), req/s at c=32 with a 200 +- 100 ms upstream, and when each of four requests
sent at once finishes with a 0.8 s upstream (does the default config serve them together?).
imagegate runs its default configuration: no concurrency or other tuning key is set.
The load generator gives each of the C workers its own httpx client
with one keep-alive connection (a shared pool throttles the client itself).

imagegate reaches the upstream through its ``type = "openai"`` provider. ``floor`` is a bare
ASGI proxy on the same stack (uvicorn, httpx's connection pool): what any gateway built on it
adds before doing any work of its own, on this machine, in this run. Both parse HTTP with
httptools: the floor with uvicorn's own protocol, imagegate with the bounded one ``imagegate
serve`` runs (server/connections.py: head size cap, head timeout, connection cap); the JSON's
``protocols`` says so.

LiteLLM runs from its own venv: ``--litellm PATH`` or ``LITELLM_BIN`` names the ``litellm``
executable; without one, LiteLLM is skipped with a note.

    python benchmarks/server_overhead.py [--litellm /tmp/litellm-venv/bin/litellm] [--quick]
    python benchmarks/server_overhead.py --instructions

``--instructions`` counts instead the user-space instructions each server runs per request
(valgrind's cachegrind, floor and imagegate at c=1): on a shared machine the latencies move
with everyone else's work, the instruction counts do not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
PROMPT = "a lighthouse at dusk"

UPSTREAM = textwrap.dedent(
    """
    import asyncio, base64, io, json, os, random, sys
    import uvicorn
    from PIL import Image

    rng = random.Random(1)
    img = Image.frombytes("RGB", (160, 160), rng.randbytes(160 * 160 * 3))
    buf = io.BytesIO(); img.save(buf, format="PNG")
    B64 = base64.b64encode(buf.getvalue()).decode()
    DELAY = float(os.environ.get("DELAY_MS", "0")) / 1000
    JITTER = float(os.environ.get("JITTER_MS", "0")) / 1000

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"}); return
        more = True
        while more:
            msg = await receive(); more = msg.get("more_body", False)
        delay = DELAY + (rng.uniform(-JITTER, JITTER) if JITTER else 0)
        if delay > 0:
            await asyncio.sleep(delay)
        n = 1
        body = json.dumps({"created": 1, "data": [{"b64_json": B64}] * n}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                access_log=False)
    """
)

FLOOR = textwrap.dedent(
    """
    # The least a gateway on this stack can add: uvicorn + httpx's connection pool, one
    # upstream call, the JSON parsed and the image decoded and encoded again; no validation,
    # no job record, no file, no router, no stage budgets.
    import json, sys
    import httpx, pybase64, uvicorn

    UP = sys.argv[2] + "/images/generations"
    pool = httpx.AsyncHTTPTransport()

    async def app(scope, receive, send):
        body, more = b"", True
        while more:
            msg = await receive(); body += msg.get("body", b""); more = msg.get("more_body", False)
        if scope["path"] != "/v1/images/generations":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"}); return
        prompt = json.loads(body)["prompt"]
        out = json.dumps({"model": "fake", "prompt": prompt, "n": 1,
                          "response_format": "b64_json"}).encode()
        request = httpx.Request("POST", UP, content=out,
                                headers={"content-type": "application/json"})
        answer = await pool.handle_async_request(request)
        data = json.loads(await answer.aread())
        png = pybase64.b64decode(data["data"][0]["b64_json"], validate=True)
        reply = b'{"created":1,"data":[{"b64_json":"' + pybase64.b64encode(png) + b'"}]}'
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(reply)).encode())]})
        await send({"type": "http.response.body", "body": reply})

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                access_log=False, lifespan="off", http="httptools")
    """
)

LITELLM_CONFIG = """\
model_list:
  - model_name: fake
    litellm_params:
      model: openai/fake
      api_base: os.environ/BENCH_UPSTREAM_API_BASE
      api_key: sk-bench-not-a-real-key
    model_info:
      mode: image_generation

litellm_settings:
  drop_params: true
  telemetry: false

general_settings: {}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url}: not ready within {timeout_s} s")


@contextmanager
def process(
    args: list[str], ready_url: str, env: dict[str, str] | None = None, slow: bool = False
) -> Iterator[subprocess.Popen[bytes]]:
    """``args`` running until the block ends; ``slow`` (under valgrind) waits 20 times longer
    for it to start and to stop."""
    proc = subprocess.Popen(
        args,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(ready_url, proc, timeout_s=1200 if slow else 60)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(200 if slow else 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


async def load(
    url: str, headers: dict[str, str], concurrency: int, total: int, warmup: int
) -> dict[str, Any]:
    body = {"model": "fake", "prompt": PROMPT, "n": 1, "response_format": "b64_json"}
    latencies: list[float] = []
    errors = 0
    counter = iter(range(total + warmup))

    async def worker() -> None:
        nonlocal errors
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            for index in counter:
                started = time.perf_counter()
                try:
                    answer = await client.post(url, json=body, headers=headers)
                    ok = answer.status_code == 200 and bool(answer.json()["data"][0]["b64_json"])
                except (httpx.HTTPError, KeyError, ValueError):
                    ok = False
                elapsed = time.perf_counter() - started
                if index >= warmup:
                    if ok:
                        latencies.append(elapsed * 1000)
                    else:
                        errors += 1

    # warm-up first, sequentially at the same concurrency, then the timed phase
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))], 3)

    return {
        "ok": len(latencies),
        "errors": errors,
        "req_per_s": round(len(latencies) / wall, 1) if wall else 0.0,
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "mean_ms": round(statistics.fmean(latencies), 3) if latencies else None,
    }


async def burst(url: str, headers: dict[str, str], n: int) -> list[float]:
    """Seconds from sending ``n`` requests at once until each one's answer (sorted)."""
    body = {"model": "fake", "prompt": PROMPT, "n": 1, "response_format": "b64_json"}
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        await client.post(url, json=body, headers=headers)  # warm: connections, imports
        started = time.perf_counter()

        async def one() -> float:
            answer = await client.post(url, json=body, headers=headers)
            answer.raise_for_status()
            return time.perf_counter() - started

        finished = await asyncio.gather(*(one() for _ in range(n)))
    return sorted(round(t, 3) for t in finished)


def burst_phase(work: Path, n: int = 4, delay_ms: int = 800) -> dict[str, Any]:
    """``n`` requests at once to a ``delay_ms`` upstream: direct, then through imagegate."""
    port = free_port()
    script = work / "upstream.py"
    script.write_text(UPSTREAM)
    path = "/v1/images/generations"
    env = {"DELAY_MS": str(delay_ms)}
    with process([sys.executable, str(script), str(port)], f"http://127.0.0.1:{port}/", env):
        upstream = f"http://127.0.0.1:{port}"
        result = {"direct_s": asyncio.run(burst(upstream + path, {}, n))}
        with imagegate_server(work, upstream) as (url, _):
            result["imagegate_s"] = asyncio.run(burst(url + path, {}, n))
    return result


def measure(
    name: str,
    url: str,
    headers: dict[str, str],
    pid: int | None,
    upstream_pid: int | None = None,
    **kw: int,
) -> dict[str, Any]:
    """One load run; CPU per request of the gateway, the upstream and this client (ms)."""
    load_before = os.getloadavg()[0]
    pids = {"gateway": pid, "upstream": upstream_pid}
    before = {role: cpu_s(p) for role, p in pids.items() if p}
    client_before = time.process_time()
    result = asyncio.run(load(url, headers, **kw))
    requests = max(1, result["ok"] + result["errors"])
    for role, p in pids.items():
        if p:
            used = cpu_s(p) - before[role]
            result[f"{role}_cpu_ms_per_req"] = round(used * 1000 / requests, 3)
    result["client_cpu_ms_per_req"] = round(
        (time.process_time() - client_before) * 1000 / requests, 3
    )
    result["loadavg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    result["path"] = name
    return result


@contextmanager
def imagegate_server(
    work: Path, upstream: str, wrap: list[str] | None = None
) -> Iterator[tuple[str, int]]:
    port = free_port()
    data = work / f"data-{port}"
    config = work / f"imagegate-{port}.toml"
    config.write_text(
        textwrap.dedent(
            f"""\
            [gateway]
            route = ["fake"]

            [providers.fake]
            type = "openai"
            url = "{upstream}/v1"
            api_key_env = "BENCH_UP_KEY"
            model = "fake"
            """
        )
    )
    env = {
        "IMAGEGATE_DATA_DIR": str(data),
        "BENCH_UP_KEY": "sk-bench",
        "IMAGEGATE_API_KEYS": "",
    }
    args = [*(wrap or []), sys.executable, "-m", "imagegate.cli", "serve", "--port", str(port)]
    args += ["--config", str(config)]
    with process(args, f"http://127.0.0.1:{port}/healthz", env, slow=bool(wrap)) as proc:
        yield f"http://127.0.0.1:{port}", proc.pid


@contextmanager
def litellm_server(work: Path, binary: str, upstream: str) -> Iterator[tuple[str, int, str]]:
    port = free_port()
    config = work / "litellm.yaml"
    config.write_text(LITELLM_CONFIG)
    key = "sk-" + secrets.token_hex(16)
    env = {
        "BENCH_UPSTREAM_API_BASE": f"{upstream}/v1",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_MASTER_KEY": key,
    }
    args = [binary, "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    with process(args, f"http://127.0.0.1:{port}/health/liveliness", env) as proc:
        yield f"http://127.0.0.1:{port}", proc.pid, key


@contextmanager
def floor_server(
    work: Path, upstream: str, wrap: list[str] | None = None
) -> Iterator[tuple[str, int]]:
    port = free_port()
    script = work / "floor.py"
    script.write_text(FLOOR)
    args = [*(wrap or []), sys.executable, str(script), str(port), f"{upstream}/v1"]
    with process(args, f"http://127.0.0.1:{port}/healthz", slow=bool(wrap)) as proc:
        yield f"http://127.0.0.1:{port}", proc.pid


def instructions(work: Path, short: int = 20, long: int = 220) -> dict[str, Any]:
    """User-space instructions per request at c=1 (millions), floor and imagegate, each server
    run twice under valgrind's cachegrind (``short`` and ``long`` requests after a warm-up):
    the difference over ``long - short`` requests. Unlike latency, other work on the machine
    does not change them; system calls (socket, file and SQLite writes) are not counted."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return {"skipped": "valgrind not found"}
    port = free_port()
    script = work / "upstream.py"
    script.write_text(UPSTREAM)
    result: dict[str, Any] = {"requests": long - short}
    with process([sys.executable, str(script), str(port)], f"http://127.0.0.1:{port}/", {}):
        upstream = f"http://127.0.0.1:{port}"
        for name, server in (("floor", floor_server), ("imagegate", imagegate_server)):
            counts = []
            for total in (short, long):
                log = work / f"cachegrind-{name}-{total}.log"
                # children traced: `imagegate serve` re-executes itself once (allocator.py)
                wrap = [valgrind, "--tool=cachegrind", "--cache-sim=no", "--trace-children=yes"]
                wrap += ["--cachegrind-out-file=/dev/null", f"--log-file={log}"]
                with server(work, upstream, wrap) as (url, _):
                    path = url + "/v1/images/generations"
                    asyncio.run(load(path, {}, concurrency=1, total=total, warmup=20))
                found = re.search(r"I\s+refs:\s+([\d,]+)", log.read_text())
                if found is None:
                    return {"skipped": f"no instruction count in {log.name}"}
                counts.append(int(found.group(1).replace(",", "")))
            result[f"{name}_minstr_per_req"] = round(
                (counts[1] - counts[0]) / (long - short) / 1e6, 3
            )
    result["own_share_minstr_per_req"] = round(
        result["imagegate_minstr_per_req"] - result["floor_minstr_per_req"], 3
    )
    return result


def run_phase(
    upstream_env: dict[str, str], litellm: str | None, work: Path, kw: dict[str, int]
) -> dict[str, Any]:
    port = free_port()
    script = work / "upstream.py"
    script.write_text(UPSTREAM)
    results: dict[str, Any] = {"loadavg_before": [round(x, 2) for x in os.getloadavg()]}
    with process(
        [sys.executable, str(script), str(port)], f"http://127.0.0.1:{port}/", upstream_env
    ) as up:
        upstream = f"http://127.0.0.1:{port}"
        path = "/v1/images/generations"
        results["direct"] = measure("direct", upstream + path, {}, None, up.pid, **kw)
        with imagegate_server(work, upstream) as (url, pid):
            results["imagegate"] = measure("imagegate", url + path, {}, pid, up.pid, **kw)
        with floor_server(work, upstream) as (url, pid):
            results["floor"] = measure("floor", url + path, {}, pid, up.pid, **kw)
        if litellm:
            with litellm_server(work, litellm, upstream) as (url, pid, key):
                headers = {"authorization": f"Bearer {key}"}
                results["litellm"] = measure("litellm", url + path, headers, pid, up.pid, **kw)
        results["upstream_cpu_s"] = round(cpu_s(up.pid), 2)
    # other work on the machine skews every figure: say how busy it was
    results["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--litellm", default=os.environ.get("LITELLM_BIN"))
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="only count user-space instructions per request under valgrind (floor and "
        "imagegate at c=1): a figure a busy machine does not skew",
    )
    args = parser.parse_args()
    if args.instructions:
        with tempfile.TemporaryDirectory(prefix="imagegate-bench-") as tmp:
            counted = instructions(Path(tmp))
        print(json.dumps({"benchmark": "server_overhead", "instructions_c1": counted}, indent=2))
        return 0
    litellm = args.litellm if args.litellm and shutil.which(args.litellm) else None
    n1, n32 = (100, 320) if args.quick else (600, 1600)
    report: dict[str, Any] = {
        "benchmark": "server_overhead",
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "litellm": litellm or None,
        "protocols": {
            "floor": "httptools (uvicorn's HttpToolsProtocol)",
            "imagegate": "httptools (imagegate.server.connections.BoundedHttpToolsProtocol)",
        },
        "notes": [],
    }
    if litellm is None:
        report["notes"].append(
            "LiteLLM skipped: pass --litellm PATH or set LITELLM_BIN to its executable "
            "(python3 -m venv /tmp/litellm-venv && /tmp/litellm-venv/bin/pip install "
            "'litellm[proxy]')"
        )
    with tempfile.TemporaryDirectory(prefix="imagegate-bench-") as tmp:
        work = Path(tmp)
        c1 = run_phase(
            {"DELAY_MS": "0"}, litellm, work, {"concurrency": 1, "total": n1, "warmup": 20}
        )
        c32 = run_phase(
            {"DELAY_MS": "200", "JITTER_MS": "100"},
            litellm,
            work,
            {"concurrency": 32, "total": n32, "warmup": 64},
        )
        c4 = burst_phase(work)
    report["c1_0ms"] = c1
    report["c32_200pm100ms"] = c32
    direct1, direct32 = c1["direct"], c32["direct"]
    summary: dict[str, Any] = {}
    for name in ("imagegate", "litellm", "floor"):
        if name not in c1:
            continue
        summary[name] = {
            "added_p50_ms_c1": round(c1[name]["p50_ms"] - direct1["p50_ms"], 3),
            "added_p99_ms_c1": round(c1[name]["p99_ms"] - direct1["p99_ms"], 3),
            "req_per_s_c32": c32[name]["req_per_s"],
            "throughput_vs_direct_c32": round(c32[name]["req_per_s"] / direct32["req_per_s"], 3),
        }
    summary["direct"] = {"p50_ms_c1": direct1["p50_ms"], "req_per_s_c32": direct32["req_per_s"]}
    if "imagegate" in summary and "litellm" in summary:
        ours, theirs = summary["imagegate"], summary["litellm"]
        summary["targets"] = {
            "added_p50_at_most_1ms": ours["added_p50_ms_c1"] <= 1.0,
            "added_p50_at_most_one_eighth_of_litellm": ours["added_p50_ms_c1"]
            <= theirs["added_p50_ms_c1"] / 8,
            "throughput_at_least_0.95x_direct": ours["throughput_vs_direct_c32"] >= 0.95,
        }
    summary["burst_4_at_800ms"] = {
        "imagegate_last_s": c4["imagegate_s"][-1],
        "direct_last_s": c4["direct_s"][-1],
        "served_together": c4["imagegate_s"][-1] < 0.8 * 1.5,
    }
    report["c4_800ms"] = c4
    report["summary"] = summary
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
