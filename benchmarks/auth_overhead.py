"""What auth adds to a request: imagegate serve with no keys, an admin key, a managed key.

Prints ONE JSON document. Everything binds 127.0.0.1. One fake OpenAI images upstream at 0 ms
(the one ``server_overhead.py`` uses), c=1, the default configuration otherwise. The paths run
in alternating rounds so drift in the machine's load hits each alike; each round reports p50,
and the summary compares medians of the rounds:

- ``no_auth``: IMAGEGATE_API_KEYS unset;
- ``admin_key``: the request carries an IMAGEGATE_API_KEYS key;
- ``managed_key``: a key from ``imagegate keys create`` with no limits (hash lookup, cached);
- ``managed_key_limited``: one with ``--rate`` and ``--budget`` (two indexed queries a request).

    python benchmarks/auth_overhead.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import server_overhead as bench  # the sibling benchmark's load generator

ADMIN = "sk-bench-admin"
PATH = "/v1/images/generations"


def _config(work: Path, upstream: str) -> Path:
    config = work / "imagegate.toml"
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
    return config


def _create_key(config: Path, data: Path, name: str, *limits: str) -> str:
    env = {**os.environ, "IMAGEGATE_DATA_DIR": str(data)}
    args = [sys.executable, "-m", "imagegate.cli", "keys", "create", name, *limits]
    run = subprocess.run(
        [*args, "--config", str(config)], env=env, capture_output=True, text=True, check=True
    )
    return run.stdout.strip()


@contextmanager
def _server(config: Path, data: Path, keys: str) -> Iterator[tuple[str, int]]:
    port = bench.free_port()
    env = {"IMAGEGATE_DATA_DIR": str(data), "BENCH_UP_KEY": "sk-bench", "IMAGEGATE_API_KEYS": keys}
    args = [sys.executable, "-m", "imagegate.cli", "serve", "--port", str(port)]
    with bench.process(
        [*args, "--config", str(config)], f"http://127.0.0.1:{port}/healthz", env
    ) as proc:
        yield f"http://127.0.0.1:{port}", proc.pid


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    args = parser.parse_args()
    total, rounds = (150, 2) if args.quick else (400, 4)
    kw = {"concurrency": 1, "total": total, "warmup": 20}
    report: dict[str, Any] = {
        "benchmark": "auth_overhead",
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        "requests_per_round": total,
        "rounds": {},
    }
    with tempfile.TemporaryDirectory(prefix="imagegate-auth-bench-") as tmp:
        work = Path(tmp)
        port = bench.free_port()
        script = work / "upstream.py"
        script.write_text(bench.UPSTREAM)
        with bench.process(
            [sys.executable, str(script), str(port)], f"http://127.0.0.1:{port}/", {"DELAY_MS": "0"}
        ) as up:
            upstream = f"http://127.0.0.1:{port}"
            config = _config(work, upstream)
            data = work / "data"
            managed = _create_key(config, data, "bench")
            limited = _create_key(
                config, data, "limited", "--rate", "100000/min", "--budget", "1000000",
                "--period", "month",
            )  # fmt: skip
            paths: dict[str, tuple[str, str | None]] = {
                "no_auth": ("", None),
                "admin_key": (ADMIN, ADMIN),
                "managed_key": (ADMIN, managed),
                "managed_key_limited": (ADMIN, limited),
            }
            rounds_out: dict[str, list[dict[str, Any]]] = {name: [] for name in paths}
            for _ in range(rounds):
                for name, (keys, key) in paths.items():
                    headers = {"authorization": f"Bearer {key}"} if key else {}
                    with _server(config, data, keys) as (url, pid):
                        rounds_out[name].append(
                            bench.measure(name, url + PATH, headers, pid, up.pid, **kw)
                        )
            direct = bench.measure("direct", upstream + PATH, {}, None, up.pid, **kw)
    report["rounds"] = rounds_out
    report["direct"] = direct
    p50 = {name: statistics.median(r["p50_ms"] for r in runs) for name, runs in rounds_out.items()}
    base = p50["no_auth"]
    report["summary"] = {
        "p50_ms_c1": {name: round(value, 3) for name, value in p50.items()},
        "added_by_auth_p50_ms": {
            name: round(value - base, 3) for name, value in p50.items() if name != "no_auth"
        },
        "managed_key_within_0.3ms_of_no_auth": p50["managed_key"] - base <= 0.3,
    }
    report["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
