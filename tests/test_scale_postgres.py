"""PostgreSQL specifics of the scale-out mode: shared breakers, the migration lock, readiness."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from faults import TcpRelay
from serverkit import IMAGEGATE, Fake, fake_settings, live
from test_backplane import _database

from imagegate.backplane import BreakerSnapshot
from imagegate.config import GatewaySettings, ScaleSettings
from imagegate.errors import AllProvidersFailed, ConnectError
from imagegate.providers.base import Deadline
from imagegate.request import ImageRequest
from imagegate.router import Router
from imagegate.store import Store


@pytest.fixture
def pg_url() -> Iterator[str]:
    """The URL of a fresh PostgreSQL database."""
    yield from _database()


def test_a_breaker_opened_in_one_process_reaches_the_others(pg_url: str, tmp_path: Path) -> None:
    """A saved open breaker is NOTIFYed to every other backplane and opens its router's copy."""
    from imagegate.backplane.postgres import PostgresBackplane, sqlalchemy_url

    async def main() -> None:
        stores = [Store(tmp_path, url=sqlalchemy_url(pg_url)) for _ in range(2)]
        here, there = (PostgresBackplane(store, pg_url) for store in stores)
        router = Router(GatewaySettings(route=["p"]), {"p": Fake("p")})
        got = asyncio.Event()

        def apply(snapshot: BreakerSnapshot) -> None:
            router.apply_shared(
                snapshot.provider, snapshot.state, snapshot.opened_until, snapshot.last_error
            )
            got.set()

        here.breakers.watch(apply)
        for backplane in (here, there):
            await backplane.start(lambda job: asyncio.sleep(0))  # type: ignore[arg-type,return-value]
        await asyncio.sleep(0.2)  # the LISTEN connections are up
        until = datetime.now(UTC) + timedelta(seconds=30)
        await there.breakers.save(BreakerSnapshot("p", "open", until, 3, "ConnectError: refused"))
        await asyncio.wait_for(got.wait(), 5)
        assert router.breakers["p"].is_open
        assert router.breakers["p"].last_error == "ConnectError: refused"
        assert (await here.breakers.load())["p"].state == "open"
        await router.aclose()
        for backplane, store in zip((here, there), stores, strict=True):
            await backplane.stop()
            await store.close()

    asyncio.run(main())


def test_the_router_reports_a_breaker_that_opens() -> None:
    """Router.on_breaker is called with the provider's name when its breaker opens."""

    async def main() -> None:
        fake = Fake("p", fail=lambda: ConnectError("refused"))
        router = Router(GatewaySettings(route=["p"]), {"p": fake})
        seen: list[str] = []
        router.on_breaker = seen.append
        with pytest.raises(AllProvidersFailed):
            await router.run(ImageRequest(prompt="x"), ["p"], Deadline(5))
        assert seen == ["p"]
        await router.aclose()

    asyncio.run(main())


def test_two_processes_opening_a_blank_database_migrate_it_once(
    pg_url: str, tmp_path: Path
) -> None:
    """Stores and backplanes opening one blank database at once all succeed (advisory locks)."""
    from imagegate.backplane.postgres import PostgresBackplane, sqlalchemy_url

    async def main() -> None:
        stores = [Store(tmp_path, url=sqlalchemy_url(pg_url)) for _ in range(3)]
        backplanes = [PostgresBackplane(store, pg_url) for store in stores]
        await asyncio.gather(*(backplane.open() for backplane in backplanes))
        await backplanes[0].store.ping()
        for backplane, store in zip(backplanes, stores, strict=True):
            await backplane.stop()
            await store.close()

    asyncio.run(main())


def test_readyz_is_unavailable_while_the_database_is_away(pg_url: str) -> None:
    """/readyz answers 503 while PostgreSQL cannot be reached, and 200 again once it can."""
    with TcpRelay(5432) as relay:
        settings = fake_settings(["p"]).model_copy(
            update={
                "scale": ScaleSettings(backplane=pg_url.replace("127.0.0.1:5432", relay.address))
            }
        )
        with live(settings, providers={"p": Fake("p")}) as server:
            assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200
            relay.cut()
            away = httpx.get(f"{server.url}/readyz", timeout=30)
            assert (away.status_code, away.json()) == (503, {"status": "unavailable"})
            relay.restore()
            assert _eventually_ok(f"{server.url}/readyz")


def _eventually_ok(url: str, within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if httpx.get(url, timeout=10).status_code == 200:
            return True
        time.sleep(0.1)
    return False


def test_providers_shows_the_breaker_the_replicas_share(pg_url: str, tmp_path: Path) -> None:
    """Scaled out, `imagegate providers --json` shows the breaker state saved in the database."""
    from imagegate.backplane.pgbus import PostgresBreakerStore
    from imagegate.backplane.postgres import sqlalchemy_url

    async def open_breaker() -> None:
        store = Store(tmp_path, url=sqlalchemy_url(pg_url))
        await store.open()
        until = datetime.now(UTC) + timedelta(seconds=30)
        await PostgresBreakerStore(store).save(BreakerSnapshot("down", "open", until, 3))
        await store.close()

    asyncio.run(open_breaker())
    config = tmp_path / "imagegate.toml"
    config.write_text(
        f'[scale]\nbackplane = "{pg_url}"\n\n'
        '[providers.down]\ntype = "openai"\nurl = "http://127.0.0.1:9/v1"\n\n'
        '[providers.up]\ntype = "openai"\nurl = "http://127.0.0.1:9/v1"\n'
    )
    run = subprocess.run(
        [IMAGEGATE, "providers", "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    breakers = {p["name"]: p["breaker"] for p in json.loads(run.stdout)["providers"]}
    assert (breakers["down"], breakers["up"]) == ("open", "closed")


def test_a_database_dropped_and_created_again_makes_the_server_not_ready(
    pg_url: str, tmp_path: Path
) -> None:
    """Scaled out, the database swapped under a running server (dropped, created again and
    migrated by another process): /readyz 503 with the reason, and new work is refused."""
    import psycopg

    server_url, name = pg_url.rsplit("/", 1)
    settings = fake_settings(["p"]).model_copy(update={"scale": ScaleSettings(backplane=pg_url)})
    with live(settings, providers={"p": Fake("p")}) as server:
        assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200
        with psycopg.connect(f"{server_url}/postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
            admin.execute(f"CREATE DATABASE {name}")
        from imagegate.backplane.postgres import sqlalchemy_url

        async def migrate() -> None:  # another process opens the new, blank database
            async with Store(tmp_path, url=sqlalchemy_url(pg_url)):
                pass

        asyncio.run(migrate())
        deadline = time.monotonic() + 10  # the first check may meet a connection the drop cut
        ready = httpx.get(f"{server.url}/readyz", timeout=10)
        while "reason" not in ready.json() and time.monotonic() < deadline:
            assert ready.status_code == 503, ready.text
            ready = httpx.get(f"{server.url}/readyz", timeout=10)
        assert ready.status_code == 503, ready.text
        assert "dropped and created again" in ready.json()["reason"]
        submitted = httpx.post(f"{server.url}/v1/jobs", json={"prompt": "a fox"}, timeout=10)
        assert submitted.status_code == 503, submitted.text
        assert "dropped and created again" in submitted.json()["error"]["message"]


def test_a_scaled_out_server_ends_a_dead_cli_job_it_reports(pg_url: str, tmp_path: Path) -> None:
    """On PostgreSQL too, an `imagegate generate` job whose process is gone is ended as
    interrupted by a running server that counts jobs (progress, metrics), not reported."""
    import socket
    import sys

    from sqlalchemy import update

    from imagegate.backplane.postgres import sqlalchemy_url
    from imagegate.store.models import Job

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True)  # fmt: skip
    settings = fake_settings(["p"]).model_copy(update={"scale": ScaleSettings(backplane=pg_url)})
    with live(settings, providers={"p": Fake("p")}) as server:

        async def dead_cli_job() -> str:
            async with Store(tmp_path, url=sqlalchemy_url(pg_url)) as other:  # the CLI's store
                job_id = await other.create_job(
                    ImageRequest(prompt="a fox"), route=["p"], source="cli"
                )
                runner = f"{int(done.stdout)}@{socket.gethostname()}"
                async with other.engine.begin() as conn:
                    await conn.execute(update(Job).where(Job.id == job_id).values(runner=runner))
            return job_id

        job_id = asyncio.run(dead_cli_job())
        progress = httpx.get(f"{server.url}/sdapi/v1/progress", timeout=10).json()
        job = httpx.get(f"{server.url}/v1/jobs/{job_id}", timeout=10).json()
    assert progress["state"]["job_count"] == 0
    assert job["status"] == "failed"
    assert "is gone" in job["error"]["message"]
