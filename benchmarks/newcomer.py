"""Wall time of a newcomer's first command: ``imagegate generate "x"`` with no model anywhere.

``HF_HUB_OFFLINE=1`` and an empty Hugging Face cache, the default config (the local provider,
``stabilityai/sd-turbo``): the command must exit non-zero with the fix, quickly, without
importing torch. Each run is a fresh process through the real entry point, as a user types it.
Beside it, in the same run: a bare ``python -c pass`` and ``python -c "import imagegate"``,
so the machine's load shows in the baseline as well.

Prints one JSON document. Usage: ``python benchmarks/newcomer.py [--runs 5]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

IMAGEGATE = str(Path(sys.executable).parent / "imagegate")


def _wall(argv: list[str], env: dict[str, str], cwd: str) -> tuple[float, int]:
    started = time.perf_counter()
    run = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, check=False, timeout=120)
    return time.perf_counter() - started, run.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each command (default 5)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "HF_HOME": str(Path(tmp) / "hf"),
            "IMAGEGATE_DATA_DIR": str(Path(tmp) / "data"),
            "XDG_CONFIG_HOME": str(Path(tmp) / "config"),
        }
        for name in ("IMAGEGATE_CONFIG", "IMAGEGATE_ROUTE"):
            env.pop(name, None)
        commands = {
            "python_bare": [sys.executable, "-c", "pass"],
            "import_imagegate": [sys.executable, "-c", "import imagegate"],
            "imagegate_generate": [IMAGEGATE, "generate", "x"],
        }
        report: dict[str, Any] = {"runs": args.runs}
        for name, argv in commands.items():
            walls, codes = [], set()
            for _ in range(args.runs):
                wall, code = _wall(argv, env, tmp)
                walls.append(wall)
                codes.add(code)
            report[name] = {
                "median_s": round(statistics.median(walls), 3),
                "max_s": round(max(walls), 3),
                "exit_codes": sorted(codes),
            }
    report["load_average_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
