"""What unauthenticated clients can do to `imagegate serve` before auth: old settings vs new.

Prints ONE JSON document. Everything binds 127.0.0.1 and every attack is bounded. Two servers
run side by side from the same config, with keys on (so every attack is unauthenticated):

- ``old``: uvicorn as ``imagegate serve`` ran it before issue 16 (its default parser, httptools,
  no header limit, no head timeout, no connection cap);
- ``new``: ``imagegate serve``'s own settings (httptools with bounds added,
  ``server.max_header_bytes`` 64 KiB, ``header_timeout_s`` 10 s, ``max_connections`` 512; the
  defaults).

Both run with ``RLIMIT_NOFILE`` lowered to ``--nofile`` (default 256) so file-descriptor
exhaustion shows with a few hundred connections. Per server, the latency of an authorised
``GET /v1/models`` (and whether it succeeds) is measured at rest, during a burst of
``--burst`` parallel ``--header-mib`` MiB headers, and with ``--silent`` silent connections
open (also after ``header_timeout_s`` + 1 s); the server's RSS at rest, its peak, and after
each burst.

    python benchmarks/hardening.py [--header-mib 48] [--burst 4] [--silent 300]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

KEY = "sk-bench-hardening"

SERVE = """
import sys, uvicorn
from imagegate.config import load_config
from imagegate.server import create_app
from imagegate.server.connections import uvicorn_config
mode, port, config = sys.argv[1], int(sys.argv[2]), sys.argv[3]
settings = load_config(config)
app = create_app(settings)
if mode == "old":
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
else:
    uvicorn.Server(uvicorn_config(app, settings.server, "127.0.0.1", port)).run()
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return -1.0


def _start(mode: str, config: Path, nofile: int) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()

    def lower_nofile() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, mode, str(port), str(config)],
        env={**os.environ, "IMAGEGATE_API_KEYS": KEY, "IMAGEGATE_DATA_DIR": str(config.parent)},
        preexec_fn=lower_nofile,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).is_success:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{mode} server did not start")


def _authorised(url: str, timeout_s: float = 15) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        answer = httpx.get(
            f"{url}/v1/models", headers={"authorization": f"Bearer {KEY}"}, timeout=timeout_s
        )
        ok = answer.status_code == 200
        status: int | str = answer.status_code
    except httpx.HTTPError as exc:
        ok, status = False, type(exc).__name__
    return {"ok": ok, "status": status, "ms": round((time.perf_counter() - started) * 1000, 1)}


def _at_rest(url: str, n: int = 20) -> dict[str, Any]:
    runs = [_authorised(url) for _ in range(n)]
    return {"p50_ms": statistics.median(r["ms"] for r in runs), "ok": sum(r["ok"] for r in runs)}


def _send_big_header(port: int, mib: int) -> None:
    chunk = b"a" * (1024 * 1024)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
            for _ in range(mib):
                sock.sendall(chunk)
            sock.sendall(b"\r\n\r\n")
            sock.settimeout(10)
            sock.recv(1024)
    except OSError:
        pass  # the server closing the connection early is the point


def _header_burst(url: str, pid: int, mib: int, burst: int) -> dict[str, Any]:
    port = int(url.rsplit(":", 1)[1])
    senders = [threading.Thread(target=_send_big_header, args=(port, mib)) for _ in range(burst)]
    for sender in senders:
        sender.start()
    time.sleep(0.2)
    during = _authorised(url)
    for sender in senders:
        sender.join(60)
    time.sleep(1)
    return {
        "authorised_during": during,
        "rss_after_mib": _rss_mib(pid),
        "rss_peak_mib": _rss_mib(pid, "VmHWM"),
    }


def _silent(url: str, pid: int, count: int, wait_s: float) -> dict[str, Any]:
    port = int(url.rsplit(":", 1)[1])
    socks: list[socket.socket] = []
    for _ in range(count):
        try:
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        except OSError:
            break
    time.sleep(0.5)
    during = _authorised(url, timeout_s=5)
    time.sleep(wait_s)
    still_open = 0
    for sock in socks:
        sock.setblocking(False)
        try:
            sock.recv(1)  # b"" (or an answer): the server closed it
        except BlockingIOError:
            still_open += 1
        except OSError:
            pass
    after = _authorised(url, timeout_s=5)
    for sock in socks:
        sock.close()
    return {
        "connections_opened": len(socks),
        "authorised_during": during,
        f"still_open_after_{wait_s:g}s": still_open,
        "authorised_after": after,
        "rss_mib": _rss_mib(pid),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--header-mib", type=int, default=48, help="MiB per large header")
    parser.add_argument("--burst", type=int, default=4, help="parallel large headers")
    parser.add_argument("--silent", type=int, default=300, help="silent connections")
    parser.add_argument("--nofile", type=int, default=256, help="servers' RLIMIT_NOFILE")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        config = Path(work) / "imagegate.toml"
        config.write_text(
            '[gateway]\nroute = ["sd"]\n\n'
            '[providers.sd]\ntype = "a1111"\nurl = "http://127.0.0.1:9"\n'
        )
        from imagegate.config import ServerSettings

        wait_s = ServerSettings().header_timeout_s + 1
        results: dict[str, Any] = {}
        servers = {mode: _start(mode, config, args.nofile) for mode in ("old", "new")}
        try:
            for mode, (proc, url) in servers.items():
                results[mode] = {"rss_at_rest_mib": _rss_mib(proc.pid), "at_rest": _at_rest(url)}
            for mode, (proc, url) in servers.items():
                results[mode]["large_headers"] = _header_burst(
                    url, proc.pid, args.header_mib, args.burst
                )
            for mode, (proc, url) in servers.items():
                results[mode]["silent_connections"] = _silent(url, proc.pid, args.silent, wait_s)
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(10)
    print(
        json.dumps(
            {
                "benchmark": "hardening",
                "settings": vars(args) | {"header_timeout_s": wait_s - 1},
                **results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
