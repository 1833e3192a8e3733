"""Usage and cost: per job (key, route, provider, images, seconds, cost), summed by
GET /v1/usage and `imagegate usage`, counted in Prometheus by key name."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from pathlib import Path

import httpx
import pytest
from faults import serve_app
from serverkit import Fake, live, tiny_png
from test_cli import cli
from test_keys import ADMIN, PRICE, _client, _create, servers
from test_server_openai import client as openai_client
from vendor_openai import OpenAIFake, gpt_image_usage

from imagegate.config import ProviderConfig, parse_settings
from imagegate.jobend import Succeeded
from imagegate.request import GeneratedImage, ImageRequest, ImageResult
from imagegate.store import Store

__all__ = ["servers"]  # the fixture, shared with test_keys

ADMIN_HEADERS = {"authorization": f"Bearer {ADMIN}"}


def _generate(url: str, key: str, n: int, model: str | None = None) -> None:
    with _client(url, key) as client:
        if model is None:
            client.images.generate(prompt="a fox", n=n)
        else:
            client.images.generate(prompt="a fox", n=n, model=model)


def test_usage_by_key_sums_each_keys_images_and_cost(servers: tuple[list[str], Fake]) -> None:
    """alice makes 3 images, bob 1: GET /v1/usage?group_by=key says so, costs included."""
    urls, _ = servers
    alice, bob = _create(urls[0], name="alice"), _create(urls[0], name="bob")
    _generate(urls[0], alice, 2)
    _generate(urls[-1], alice, 1)
    _generate(urls[-1], bob, 1)
    answer = httpx.get(f"{urls[0]}/v1/usage", params={"group_by": "key"}, headers=ADMIN_HEADERS)
    assert answer.status_code == 200, answer.text
    rows = {row["key"]: row for row in answer.json()["data"]}
    assert (rows["alice"]["jobs"], rows["alice"]["images"]) == (2, 3)
    assert rows["alice"]["cost"] == pytest.approx(3 * PRICE)
    assert (rows["bob"]["images"], rows["bob"]["cost"]) == (1, pytest.approx(PRICE))
    assert rows["alice"]["seconds"] >= 0


def test_a_key_sees_only_its_own_usage(servers: tuple[list[str], Fake]) -> None:
    """bob's GET /v1/usage holds bob's row only."""
    urls, _ = servers
    alice, bob = _create(urls[0], name="alice"), _create(urls[0], name="bob")
    _generate(urls[0], alice, 1)
    _generate(urls[0], bob, 1)
    mine = httpx.get(f"{urls[0]}/v1/usage", headers={"authorization": f"Bearer {bob}"})
    assert [row["key"] for row in mine.json()["data"]] == ["bob"]


def test_usage_by_route_provider_and_day(servers: tuple[list[str], Fake]) -> None:
    """group_by=route separates 'fast' from 'default'; provider and day group too."""
    urls, _ = servers
    key = _create(urls[0], name="carol")
    _generate(urls[0], key, 1, model="fast")
    _generate(urls[0], key, 1)
    by = {}
    for group in ("route", "provider", "day"):
        answer = httpx.get(f"{urls[0]}/v1/usage", params={"group_by": group}, headers=ADMIN_HEADERS)
        by[group] = {row[group]: row["images"] for row in answer.json()["data"]}
    assert by["route"] == {"fast": 1, "default": 1}
    assert by["provider"] == {"cheap": 2}
    assert sum(by["day"].values()) == 2


@pytest.mark.parametrize(
    ("params", "field"),
    [({"group_by": "week"}, "group_by"), ({"from": "yesterday"}, "from"),
     ({"from": "2026-12-02", "to": "2026-12-01"}, "to")],
)  # fmt: skip
def test_bad_usage_queries_are_400s_naming_the_field(
    servers: tuple[list[str], Fake], params: dict[str, str], field: str
) -> None:
    """An unknown group_by, a date that is no date, to before from: 400 naming the field."""
    urls, _ = servers
    answer = httpx.get(f"{urls[0]}/v1/usage", params=params, headers=ADMIN_HEADERS)
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == field


def test_prometheus_counts_requests_images_and_cost_by_key(
    servers: tuple[list[str], Fake],
) -> None:
    """/metrics: imagegate_key_requests_total{key="dora",outcome="admitted"} and images
    (counted by the replica that ran the job)."""
    urls, _ = servers
    key = _create(urls[0], name="dora")
    _generate(urls[0], key, 2)
    text = httpx.get(f"{urls[0]}/metrics", headers=ADMIN_HEADERS).text
    assert 'imagegate_key_requests_total{key="dora",outcome="admitted"} 1.0' in text
    assert _summed(urls, 'imagegate_key_images_total{key="dora"}') == 2.0


def test_prometheus_counts_a_native_jobs_images_by_key(servers: tuple[list[str], Fake]) -> None:
    """A job submitted to POST /v1/jobs counts its images under its key's name too."""
    urls, _ = servers
    key = _create(urls[0], name="erin")
    auth = {"authorization": f"Bearer {key}"}
    job = httpx.post(f"{urls[0]}/v1/jobs", json={"prompt": "a fox", "n": 3}, headers=auth)
    assert job.status_code in (200, 201, 202), job.text
    for _ in range(200):  # bounded: 10 s
        done = httpx.get(f"{urls[0]}/v1/jobs/{job.json()['id']}", headers=auth).json()
        if done["status"] not in ("queued", "running"):
            break
        time.sleep(0.05)
    assert done["status"] == "succeeded", done
    assert _summed(urls, 'imagegate_key_images_total{key="erin"}') == 3.0


def _summed(urls: list[str], series: str) -> float:
    """A counter's value summed over every replica's /metrics (0 where absent)."""
    total = 0.0
    for url in urls:
        for line in httpx.get(f"{url}/metrics", headers=ADMIN_HEADERS).text.splitlines():
            if line.startswith(series + " "):
                total += float(line.split()[-1])
    return total


def test_cost_per_megapixel_adds_to_cost_per_image() -> None:
    """Two 512x512 images at 0.01 each plus 1.00 per megapixel cost 0.02 + 0.524288."""
    config = ProviderConfig(type="fake", cost_per_image=0.01, cost_per_megapixel=1.0)
    assert config.cost_of([(512, 512), (512, 512)]) == pytest.approx(0.02 + 0.524288)


def test_a_negative_price_is_a_config_error() -> None:
    """cost_per_megapixel = -1 is refused naming the key."""
    from imagegate.config import parse_settings
    from imagegate.errors import ConfigError

    table = {"type": "a1111", "url": "http://127.0.0.1:9", "cost_per_megapixel": -1}
    with pytest.raises(ConfigError) as caught:
        parse_settings({"gateway": {"route": ["a"]}, "providers": {"a": table}})
    assert caught.value.key == "providers.a.cost_per_megapixel"


def _seed(data: Path) -> None:
    async def main() -> None:
        async with Store(data) as store:
            for owner, n in (("alice", 2), ("bob", 1)):
                request = ImageRequest(prompt="a fox", n=n)
                job_id, _ = await store.open_job(request, route=["p"], source="jobs", owner=owner)
                result = ImageResult(
                    images=[
                        GeneratedImage(png=tiny_png(color=(i, n, 1)), width=64, height=64, seed=i)
                        for i in range(n)
                    ],
                    provider="p",
                    model="m",
                    attempts=[],
                    elapsed_s=0.5,
                    request=request,
                )
                await store.end(job_id, Succeeded(result, cost=0.01 * n))

    asyncio.run(main())


def test_cli_usage_prints_json_and_csv(isolated_env: Path) -> None:
    """`imagegate usage --json` and `--csv` give each key's images and cost."""
    _seed(isolated_env / "data")
    run = cli("usage", "--json", cwd=isolated_env)
    assert run.returncode == 0, run.stderr
    rows = {row["key"]: row for row in json.loads(run.stdout)["data"]}
    assert (rows["alice"]["images"], rows["bob"]["images"]) == (2, 1)
    as_csv = cli("usage", "--csv", "--group-by", "provider", cwd=isolated_env)
    assert as_csv.returncode == 0, as_csv.stderr
    table = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert table == [
        {"provider": "p", "jobs": "2", "succeeded": "2", "images": "3", "seconds": "1.0",
         "cost": "0.03", "tokens": "0"}
    ]  # fmt: skip


def test_cli_usage_bad_group_exits_2(isolated_env: Path) -> None:
    """`usage --group-by week`: exit 2 naming group_by and the allowed values."""
    run = cli("usage", "--group-by", "week", cwd=isolated_env)
    assert run.returncode == 2
    assert "group_by" in run.stderr
    assert "provider" in run.stderr


def test_openai_usage_object_is_recorded_on_the_job_and_summed() -> None:
    """A GPT image upstream's `usage` tokens land on the job's attempt and in /v1/usage."""
    fake = OpenAIFake()
    with serve_app(fake.app()) as upstream:
        settings = parse_settings(
            {
                "gateway": {"route": ["oai"]},
                "providers": {
                    "oai": {
                        "type": "openai",
                        "url": f"{upstream}/v1",
                        "api_key_env": None,
                        "model": "gpt-image-1",
                    }
                },
            }
        )
        with live(settings) as server, openai_client(server) as c:
            raw = c.images.with_raw_response.generate(prompt="a fox at dawn", n=2)
            job = httpx.get(f"{server.url}/v1/jobs/{raw.headers['x-imagegate-job']}").json()
            rows = httpx.get(f"{server.url}/v1/usage", params={"group_by": "provider"}).json()
    expected = gpt_image_usage("a fox at dawn", 2)
    assert job["attempts"][0]["usage"]["total_tokens"] == expected["total_tokens"]
    assert job["attempts"][0]["usage"]["input_tokens_details.text_tokens"] == 3
    assert rows["data"][0]["tokens"] == expected["total_tokens"]


def test_a_keys_spend_is_kept_on_its_row_and_summed_again_when_a_period_starts(
    tmp_path: Path,
) -> None:
    """Each job's cost is added to the key's row; a row counting an older period is summed
    from the jobs again, so the budget check reads one row, not a month of jobs."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from imagegate.store.keys import create_key, standing
    from imagegate.store.models import ApiKey

    async def main() -> tuple[float, float, float]:
        async with Store(tmp_path) as store:
            _, key = await create_key(store, "carol", budget=10.0, period="month")
            now = datetime.now(UTC)
            first = (await standing(store, key, now))[2]  # sums the jobs: none yet
            for cost in (0.25, 0.5):
                request = ImageRequest(prompt="a fox")
                job_id, _ = await store.open_job(request, route=["p"], source="jobs", owner="carol")
                image = GeneratedImage(png=tiny_png(color=(1, 2, 3)), width=64, height=64, seed=1)
                result = ImageResult(
                    images=[image], provider="p", model="m", attempts=[], elapsed_s=0.1,
                    request=request,
                )  # fmt: skip
                await store.end(job_id, Succeeded(result, cost=cost))
            kept = (await standing(store, key, now))[2]
            async with store.engine.begin() as conn:  # as if the row counted last month
                stale = now - timedelta(days=40)
                await conn.execute(update(ApiKey).values(spent=99.0, spent_since=stale))
            again = (await standing(store, key, now))[2]
            return first, kept, again

    first, kept, again = asyncio.run(main())
    assert first == 0.0
    assert kept == pytest.approx(0.75)
    assert again == pytest.approx(0.75)
