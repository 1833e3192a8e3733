"""Managed keys as tenants: created by an admin, limited by route, rate and budget before any
provider is called, stored only as a hash; on SQLite and across PostgreSQL replicas."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import webuiapi
from faults import serve_app
from serverkit import Fake, close_gateway_at_shutdown
from test_backplane import _database
from test_cli import cli

from imagegate.backplane.postgres import PostgresBackplane, shared_store
from imagegate.config import GatewaySettings, ProviderConfig, RouteSettings, ScaleSettings, Settings
from imagegate.gateway import Gateway
from imagegate.server import create_app

ADMIN = "sk-admin-for-keys"
PRICE = 0.01


def _settings(scale: ScaleSettings | None = None) -> Settings:
    return Settings(
        gateway=GatewaySettings(route=["cheap"], deadline_s=30),
        routes={"fast": RouteSettings(route=["cheap"])},
        providers={"cheap": ProviderConfig(type="fake", cost_per_image=PRICE)},
        scale=scale or ScaleSettings(),
    )


@contextlib.contextmanager
def _replica(pg_url: str | None, provider: Fake) -> Iterator[str]:
    """One server (its own worker when on PostgreSQL); its URL."""
    if pg_url is None:
        with serve_app(create_app(_settings(), providers={"cheap": provider})) as url:
            yield url
        return
    settings = _settings(ScaleSettings(backplane=pg_url))
    gateway = Gateway(settings, providers={"cheap": provider}, store=shared_store(settings))
    assert gateway.store is not None
    backplane = PostgresBackplane(gateway.store, pg_url, worker_queues=["cheap"])
    app = create_app(settings, gateway=gateway, backplane=backplane)
    close_gateway_at_shutdown(app, gateway)
    with serve_app(app) as url:
        yield url


@pytest.fixture(params=["local", "postgres"])
def servers(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[list[str], Fake]]:
    """Two replicas sharing one store (PostgreSQL) or one server (SQLite), and the provider."""
    monkeypatch.setenv("IMAGEGATE_API_KEYS", ADMIN)
    provider = Fake("cheap", cost=PRICE)
    if request.param == "local":
        with _replica(None, provider) as url:
            yield [url], provider
        return
    for pg_url in _database():
        with _replica(pg_url, provider) as one, _replica(pg_url, provider) as two:
            yield [one, two], provider


def _create(url: str, **limits: object) -> str:
    answer = httpx.post(f"{url}/v1/keys", json=limits, headers={"authorization": f"Bearer {ADMIN}"})
    assert answer.status_code == 201, answer.text
    key: str = answer.json()["key"]
    return key


def _client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def test_two_managed_keys_generate_and_their_jobs_carry_their_names(
    servers: tuple[list[str], Fake],
) -> None:
    """alice and bob each generate with the official client; each job records its owner."""
    urls, _ = servers
    alice, bob = _create(urls[0], name="alice"), _create(urls[0], name="bob")
    for key, name in ((alice, "alice"), (bob, "bob")):
        with _client(urls[-1], key) as client:
            raw = client.images.with_raw_response.generate(prompt="a fox")
        job_id = raw.headers["x-imagegate-job"]
        job = httpx.get(f"{urls[0]}/v1/jobs/{job_id}", headers={"authorization": f"Bearer {ADMIN}"})
        assert job.json()["owner"] == name


def test_a_route_the_key_may_not_use_is_a_403(servers: tuple[list[str], Fake]) -> None:
    """A key limited to 'fast' gets PermissionDeniedError for the default route."""
    urls, provider = servers
    key = _create(urls[0], name="narrow", routes=["fast"])
    with _client(urls[0], key) as client:
        assert client.images.generate(prompt="a fox", model="fast").data
        calls = provider.calls
        with pytest.raises(openai.PermissionDeniedError) as caught:
            client.images.generate(prompt="a fox", model="default")
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "route_not_allowed"
    assert provider.calls == calls


def test_over_its_rate_a_key_gets_429_with_retry_after_on_every_replica(
    servers: tuple[list[str], Fake],
) -> None:
    """rate 2/min: the third request, on whichever replica, is a 429 rate_limit_exceeded."""
    urls, provider = servers
    key = _create(urls[0], name="slowpoke", rate_per_min=2)
    with _client(urls[0], key) as first, _client(urls[-1], key) as second:
        first.images.generate(prompt="a fox")
        second.images.generate(prompt="a fox")
        calls = provider.calls
        with pytest.raises(openai.RateLimitError) as caught:
            second.images.generate(prompt="a fox")
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "rate_limit_exceeded"
    assert 1 <= int(caught.value.response.headers["retry-after"]) <= 60
    assert provider.calls == calls


def test_over_its_budget_a_key_gets_insufficient_quota_before_any_provider_call(
    servers: tuple[list[str], Fake],
) -> None:
    """budget 0.02 a day at 0.01 an image: the third image is refused, the provider untouched."""
    urls, provider = servers
    key = _create(urls[0], name="thrifty", budget=2 * PRICE, period="day")
    with _client(urls[0], key) as first, _client(urls[-1], key) as second:
        first.images.generate(prompt="a fox")
        second.images.generate(prompt="a fox")
        calls = provider.calls
        with pytest.raises(openai.RateLimitError) as caught:
            first.images.generate(prompt="a fox")
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "insufficient_quota"
    assert provider.calls == calls


def test_a_managed_key_works_through_webuiapi(servers: tuple[list[str], Fake]) -> None:
    """webuiapi with the managed key as the Basic password generates an image."""
    urls, _ = servers
    key = _create(urls[0], name="painter")
    host, port = urls[0].removeprefix("http://").split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port))
    api.set_auth("painter", key)
    assert len(api.txt2img(prompt="a fox").images) == 1


def test_only_admin_keys_manage_keys_and_no_key_is_shown_again(
    servers: tuple[list[str], Fake],
) -> None:
    """A tenant gets 403 on /v1/keys; the list never holds a key or its hash; a revoked key
    stops working."""
    urls, _ = servers
    key = _create(urls[0], name="tenant")
    tenant = {"authorization": f"Bearer {key}"}
    assert httpx.get(f"{urls[0]}/v1/keys", headers=tenant).status_code == 403
    admin = {"authorization": f"Bearer {ADMIN}"}
    listing = httpx.get(f"{urls[0]}/v1/keys", headers=admin)
    assert listing.status_code == 200
    assert key not in listing.text
    assert "hash" not in listing.text
    assert httpx.delete(f"{urls[0]}/v1/keys/tenant", headers=admin).status_code == 204
    assert httpx.get(f"{urls[0]}/v1/models", headers=tenant).status_code == 401


def test_bad_limits_in_the_admin_api_name_the_field(servers: tuple[list[str], Fake]) -> None:
    """A negative budget, a bad period, an unknown route: 400 naming the field."""
    urls, _ = servers
    admin = {"authorization": f"Bearer {ADMIN}"}
    for body, field in (
        ({"name": "x", "budget": -1, "period": "day"}, "budget"),
        ({"name": "x", "budget": 1, "period": "week"}, "period"),
        ({"name": "x", "routes": ["nope"]}, "routes"),
    ):
        answer = httpx.post(f"{urls[0]}/v1/keys", json=body, headers=admin)
        assert answer.status_code == 400, answer.text
        assert field in answer.json()["error"]["param"]


def test_cli_create_prints_the_key_once_and_stores_only_its_hash(isolated_env: Path) -> None:
    """`keys create` prints the key; `keys list` and the database never hold it."""
    run = cli("keys", "create", "alice", "--rate", "60/min", "--budget", "5", "--period", "day",
              cwd=isolated_env)  # fmt: skip
    assert run.returncode == 0, run.stderr
    key = run.stdout.strip()
    assert key.startswith("ig-")
    listing = cli("keys", "list", "--json", cwd=isolated_env)
    assert listing.returncode == 0, listing.stderr
    assert json.loads(listing.stdout)[0]["name"] == "alice"
    assert key not in listing.stdout
    database = (isolated_env / "data" / "imagegate.db").read_bytes()
    assert key.encode() not in database


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--rate", "60/hour"], "--rate"),
        (["--rate", "lots"], "--rate"),
        (["--budget", "-5", "--period", "day"], "--budget"),
        (["--budget", "5", "--period", "week"], "--period"),
        (["--budget", "5"], "--period"),
        (["--routes", "nope"], "--routes"),
    ],
)
def test_cli_bad_limits_exit_2_naming_the_flag(
    isolated_env: Path, args: list[str], names: str
) -> None:
    """A malformed limit: exit 2, one line naming the flag, no traceback."""
    run = cli("keys", "create", "bob", *args, cwd=isolated_env)
    assert run.returncode == 2, run.stderr
    assert names in run.stderr
    assert "Traceback" not in run.stderr


def test_cli_revoking_the_last_admin_key_is_refused(isolated_env: Path) -> None:
    """The only admin key cannot be revoked (exit 2); an unknown name exits 2 naming the keys."""
    assert cli("keys", "create", "root", "--admin", cwd=isolated_env).returncode == 0
    refused = cli("keys", "revoke", "root", cwd=isolated_env)
    assert refused.returncode == 2
    assert "last admin key" in refused.stderr
    unknown = cli("keys", "revoke", "carol", cwd=isolated_env)
    assert unknown.returncode == 2
    assert "root" in unknown.stderr


def test_a_key_sees_only_its_own_jobs_and_images_and_admins_see_all(
    servers: tuple[list[str], Fake],
) -> None:
    """bob cannot list, read, follow or fetch alice's job or image (404); the admin sees both;
    alice's presigned image URL still works for anyone holding it."""
    urls, _ = servers
    alice, bob = _create(urls[0], name="alice"), _create(urls[0], name="bob")
    with _client(urls[0], alice) as client:
        raw = client.images.with_raw_response.generate(prompt="a fox", response_format="url")
    job_id = raw.headers["x-imagegate-job"]
    data = raw.parse().data
    assert data is not None
    presigned = data[0].url
    assert presigned is not None
    image_id = presigned.split("?")[0].rsplit("/", 1)[1]
    with _client(urls[-1], bob) as client:
        client.images.generate(prompt="a cat")
    as_alice = {"authorization": f"Bearer {alice}"}
    as_bob = {"authorization": f"Bearer {bob}"}
    as_admin = {"authorization": f"Bearer {ADMIN}"}
    url = urls[-1]
    assert httpx.get(f"{url}/v1/jobs/{job_id}", headers=as_bob).status_code == 404
    assert httpx.get(f"{url}/v1/jobs/{job_id}/events", headers=as_bob).status_code == 404
    assert httpx.post(f"{url}/v1/jobs/{job_id}/cancel", headers=as_bob).status_code == 404
    assert httpx.get(f"{url}/v1/images/{image_id}", headers=as_bob).status_code == 404
    assert httpx.get(f"{url}/v1/images/{image_id}", headers=as_alice).status_code == 200
    bobs = httpx.get(f"{url}/v1/jobs", headers=as_bob).json()["data"]
    assert {job["owner"] for job in bobs} == {"bob"}
    alices_images = httpx.get(f"{url}/v1/images", headers=as_alice).json()["data"]
    assert [image["id"] for image in alices_images] == [image_id]
    everyone = httpx.get(f"{url}/v1/jobs", headers=as_admin).json()["data"]
    assert {job["owner"] for job in everyone} == {"alice", "bob"}
    assert httpx.get(presigned).status_code == 200


def test_a1111_progress_shows_only_the_callers_own_running_job(
    servers: tuple[list[str], Fake],
) -> None:
    """While alice's job runs, bob's /sdapi/v1/progress names no job; alice's names hers."""
    urls, provider = servers
    provider.delay_s = 1.5
    alice, bob = _create(urls[0], name="alice"), _create(urls[0], name="bob")
    as_alice = {"authorization": f"Bearer {alice}"}
    submitted = httpx.post(f"{urls[0]}/v1/jobs", json={"prompt": "a fox"}, headers=as_alice)
    job_id = submitted.json()["id"]
    for _ in range(100):  # bounded: 5 s until it runs
        mine = httpx.get(f"{urls[0]}/sdapi/v1/progress", headers=as_alice).json()
        if mine["state"]["job"]:
            break
        time.sleep(0.05)
    theirs = httpx.get(f"{urls[0]}/sdapi/v1/progress", headers={"authorization": f"Bearer {bob}"})
    assert mine["state"]["job"] == job_id
    assert job_id not in theirs.text
