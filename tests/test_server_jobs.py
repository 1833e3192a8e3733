"""The jobs API: 202 with position, lookup, list, cancel, and SSE events with replay."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
from serverkit import Fake, Live, fake_settings, live


@pytest.fixture
def server() -> Iterator[Live]:
    """A server whose one provider, 'slow', takes 10 steps of 30 ms and runs one job at once."""
    with live(
        fake_settings(["slow"]), {"slow": Fake("slow", steps=10, step_s=0.03, concurrency=1)}
    ) as s:
        yield s


def submit(server: Live, **fields: object) -> dict[str, object]:
    answer = httpx.post(f"{server.url}/v1/jobs", json={"prompt": "a fox", **fields})
    assert answer.status_code == 202
    body: dict[str, object] = answer.json()
    return body


def wait_status(
    server: Live, job_id: object, statuses: set[str], timeout_s: float = 5
) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while True:
        job: dict[str, object] = httpx.get(f"{server.url}/v1/jobs/{job_id}").json()
        if job["status"] in statuses or time.monotonic() > deadline:
            return job
        time.sleep(0.02)


def events(
    server: Live, job_id: object, last_id: int | None = None
) -> list[tuple[int, str, dict[str, object]]]:
    headers = {"last-event-id": str(last_id)} if last_id is not None else {}
    seen: list[tuple[int, str, dict[str, object]]] = []
    with httpx.stream(
        "GET", f"{server.url}/v1/jobs/{job_id}/events", headers=headers, timeout=10
    ) as stream:
        fields: dict[str, str] = {}
        for line in stream.iter_lines():
            if line == "" and "event" in fields:
                seen.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
                fields = {}
            elif ": " in line:
                key, value = line.split(": ", 1)
                fields[key] = value
    return seen


def test_submit_answers_202_with_id_and_position(server: Live) -> None:
    """The second of two jobs waits in position 1 behind the running one."""
    first = submit(server)
    wait_status(server, first["id"], {"running"})
    second = submit(server)
    assert second["status"] == "queued"
    assert second["position"] == 1


def test_a_finished_job_shows_images_with_urls(server: Live) -> None:
    """GET /v1/jobs/{id} ends succeeded, with the provider, attempts and image URLs."""
    job = wait_status(server, submit(server, seed=3)["id"], {"succeeded"})
    assert job["provider"] == "slow"
    assert job["progress"] == 1.0
    images = job["images"]
    assert isinstance(images, list)
    assert images[0]["seed"] == 3
    assert httpx.get(images[0]["url"]).headers["content-type"] == "image/png"


def test_list_pages_newest_first(server: Live) -> None:
    """GET /v1/jobs lists newest first; before= pages on."""
    ids = [submit(server)["id"] for _ in range(3)]
    page = httpx.get(f"{server.url}/v1/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in page["data"]] == ids[::-1][:2]
    rest = httpx.get(f"{server.url}/v1/jobs", params={"before": page["next_before"]}).json()
    assert [j["id"] for j in rest["data"]] == ids[:1]


def test_cancel_of_a_queued_job_is_immediate(server: Live) -> None:
    """A job still waiting is cancelled at once and never runs."""
    running = submit(server)
    wait_status(server, running["id"], {"running"})
    queued = submit(server)
    answer = httpx.post(f"{server.url}/v1/jobs/{queued['id']}/cancel")
    assert answer.status_code == 200
    assert answer.json()["status"] == "cancelled"


def test_cancel_of_a_running_job_stops_it(server: Live) -> None:
    """A running job is stopped and ends cancelled, well before it would have finished."""
    job = submit(server)
    wait_status(server, job["id"], {"running"})
    started = time.monotonic()
    answer = httpx.post(f"{server.url}/v1/jobs/{job['id']}/cancel")
    assert answer.json()["status"] == "cancelled"
    assert time.monotonic() - started < 0.25
    assert [kind for _, kind, _ in events(server, job["id"])][-1] == "cancelled"


def test_events_arrive_in_order_with_step_progress(server: Live) -> None:
    """SSE: queued, started, progress steps in order, then succeeded; ids increase."""
    seen = events(server, submit(server)["id"])
    kinds = [kind for _, kind, _ in seen]
    assert kinds[:2] == ["queued", "started"]
    assert kinds[-1] == "succeeded"
    steps = [int(str(data["step"])) for _, kind, data in seen if kind == "progress"]
    assert steps == sorted(steps)
    assert steps[-1] == 10
    ids = [event_id for event_id, _, _ in seen]
    assert ids == sorted(ids)


def test_last_event_id_replays_only_what_was_missed(server: Live) -> None:
    """Reconnecting with Last-Event-ID gets exactly the events after that id."""
    job_id = submit(server)["id"]
    everything = events(server, job_id)
    resumed = events(server, job_id, last_id=everything[2][0])
    assert resumed == everything[3:]


def test_unknown_job_is_404_in_openai_shape(server: Live) -> None:
    """A job id that does not exist is a 404 naming the id."""
    answer = httpx.get(f"{server.url}/v1/jobs/nope")
    assert answer.status_code == 404
    assert answer.json()["error"]["param"] == "id"
