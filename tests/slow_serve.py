"""`imagegate serve` with one slow fake provider, for tests that kill the server process.

Run as ``python tests/slow_serve.py serve --port PORT --config FILE``: the configured
providers are replaced by ``slow`` (10 steps of 50 ms, one job at a time); the rest is the
real CLI and server.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import imagegate.gateway
from imagegate import cli


def _slow_providers(settings: Any) -> dict[str, Any]:
    from serverkit import Fake

    return {"slow": Fake("slow", steps=10, step_s=0.05, concurrency=1)}


if __name__ == "__main__":
    imagegate.gateway.build_providers = _slow_providers
    sys.exit(cli.main(sys.argv[1:]))
