"""`imagegate generate` stopped by SIGTERM or SIGHUP cancels the upstream job, as Ctrl-C does,
and exits with 128 + the signal (against the A1111 fake rebuilt from recorded answers)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faults import serve_app
from serverkit import stopped_at_exit
from vendor_a1111 import A1111Fake


def _generate(config: Path, home: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "imagegate", "generate", "a fox", "--size", "64x64",
         "--config", str(config), *extra],
        cwd=home,
        env={**os.environ, "IMAGEGATE_DATA_DIR": str(home / "data")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip


def _config(home: Path, url: str) -> Path:
    config = home / "imagegate.toml"
    config.write_text(
        f'[gateway]\nroute = ["sd"]\n\n[providers.sd]\ntype = "a1111"\nurl = "{url}"\n'
    )
    return config


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_cancels_the_upstream_job_and_exits_128_plus_it(
    isolated_env: Path, sig: signal.Signals
) -> None:
    """SIGTERM / SIGHUP mid-run: A1111 gets /interrupt, the exit code is 128 + the signal."""
    fake = A1111Fake(step_s=0.05)
    with serve_app(fake.app()) as url:
        proc = _generate(_config(isolated_env, url), isolated_env, "--steps", "150")
        with stopped_at_exit(proc):
            deadline = time.monotonic() + 30
            while fake.step < 2:
                assert proc.poll() is None, "generate ended before the signal"
                assert time.monotonic() < deadline, "the generation never started upstream"
                time.sleep(0.02)
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=20)
        assert proc.returncode == 128 + sig, err.decode()
        assert fake.interrupts >= 1
        assert fake.step < 150


def test_json_errors_carry_the_field(isolated_env: Path) -> None:
    """generate --json: the error object names the field (and the limit) it is about."""
    fake = A1111Fake()
    with serve_app(fake.app()) as url:
        proc = _generate(_config(isolated_env, url), isolated_env, "--scheduler", "nope", "--json")
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    error = json.loads(out)["error"]
    assert error["field"] == "scheduler"
    assert "karras" in error["limit"]
