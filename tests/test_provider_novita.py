"""The novita provider against its loopback fake: what the shared conformance suite can't see."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import fakekit
import pytest
from fakekit import drive
from vendor_novita import NovitaFake

from imagegate.config import GatewaySettings
from imagegate.errors import (
    AllProvidersFailed,
    AuthError,
    ContentFiltered,
    InvalidRequest,
    Timeout,
    UpstreamError,
)
from imagegate.providers.base import Deadline, Progress
from imagegate.providers.novita import NovitaConfig, NovitaProvider
from imagegate.request import GeneratedImage, ImageRequest
from imagegate.router import Router

KEY = "nv-test-key-0123456789"
REQUEST = ImageRequest(prompt="a lighthouse", width=128, height=128, steps=4, seed=7)


@pytest.fixture(scope="module")
def started() -> Iterator[NovitaFake]:
    """One fake for the module (starting two servers takes a moment), requiring KEY."""
    with NovitaFake(key=KEY) as running:
        yield running


@pytest.fixture
def fake(started: NovitaFake, monkeypatch: pytest.MonkeyPatch) -> NovitaFake:
    """The module's fake, reset, with KEY in the environment."""
    monkeypatch.setenv("NOVITA_API_KEY", KEY)
    started.reset()
    return started


def provider(fake: NovitaFake, **settings: Any) -> NovitaProvider:
    config = NovitaConfig(url=fake.url, poll_interval_s=0.01, **settings)
    return NovitaProvider("novita", config)


def generate(
    prov: NovitaProvider, req: ImageRequest = REQUEST, seen: list[Progress] | None = None
) -> list[GeneratedImage]:
    return fakekit.generate(prov, req, seen)


def test_polling_reports_progress_percent_until_complete(fake: NovitaFake) -> None:
    """task.progress_percent comes through as progress out of 100, ending at 100."""
    fake.step_s = 0.05
    seen: list[Progress] = []
    generate(provider(fake), REQUEST.model_copy(update={"steps": 6}), seen)
    steps = [p.step for p in seen]
    assert steps == sorted(steps)
    assert len([s for s in steps if 0 < s < 100]) >= 2
    assert seen[-1] == Progress(100, 100)
    assert fake.counts["poll"] >= 3


def test_seed_is_read_from_extra_seed(fake: NovitaFake) -> None:
    """The reported seed is Novita's extra.seed (a string), not merely the one sent."""
    fake.reported_seed = 4242
    [image] = generate(provider(fake))
    assert fake.submitted[0]["request"]["seed"] == 7
    assert image.seed == 4242


def test_random_seed_is_chosen_and_sent(fake: NovitaFake) -> None:
    """With no seed asked for, a concrete seed is sent (never -1) and reported."""
    [image] = generate(provider(fake), REQUEST.model_copy(update={"seed": None}))
    sent = fake.submitted[0]["request"]["seed"]
    assert sent >= 0
    assert image.seed == sent


def test_request_fields_are_nested_under_request(fake: NovitaFake) -> None:
    """The body is {"extra", "request"} with the documented names and config defaults."""
    generate(provider(fake), REQUEST.model_copy(update={"negative_prompt": "fog"}))
    body = fake.submitted[0]
    assert body["extra"] == {"response_image_type": "png"}
    assert body["request"] == {
        "model_name": "sd_xl_base_1.0.safetensors",
        "prompt": "a lighthouse",
        "negative_prompt": "fog",
        "width": 128,
        "height": 128,
        "image_num": 1,
        "steps": 4,
        "guidance_scale": 7.5,
        "sampler_name": "Euler a",
        "seed": 7,
    }


def test_nsfw_detection_is_sent_only_when_configured(fake: NovitaFake) -> None:
    """Novita's NSFW detection stays off unless the config turns it on (with its level)."""
    generate(provider(fake, nsfw_detection=True, nsfw_detection_level=1))
    extra = fake.submitted[0]["extra"]
    assert extra["enable_nsfw_detection"] is True
    assert extra["nsfw_detection_level"] == 1


def test_images_are_downloaded_from_the_second_host_without_the_key(fake: NovitaFake) -> None:
    """The presigned URL's host gets no Authorization header, and the PNG comes back."""
    [image] = generate(provider(fake))
    assert urlsplit(fake.images_url).port != urlsplit(fake.url).port
    assert fake.counts["download"] == 1
    assert all("authorization" not in h for h in fake.download_headers)
    assert image.png.startswith(b"\x89PNG")
    assert (image.width, image.height) == (128, 128)


def test_n_images_are_n_tasks_with_consecutive_seeds(fake: NovitaFake) -> None:
    """n = 3 submits three one-image tasks seeded 7, 8, 9, each reproducible alone."""
    images = generate(provider(fake), REQUEST.model_copy(update={"n": 3}))
    assert sorted(b["request"]["seed"] for b in fake.submitted) == [7, 8, 9]
    assert all(b["request"]["image_num"] == 1 for b in fake.submitted)
    assert [img.seed for img in images] == [7, 8, 9]


def test_failed_task_reason_is_an_upstream_error(fake: NovitaFake) -> None:
    """TASK_STATUS_FAILED with an internal reason is an UpstreamError quoting the reason."""
    fake.arm("task_failed")
    with pytest.raises(UpstreamError, match="the worker crashed"):
        generate(provider(fake))


def test_failed_task_for_content_is_content_filtered(fake: NovitaFake) -> None:
    """A task that failed because its content was refused is ContentFiltered."""
    fake.fail_reason = "NSFW content detected in the output"
    fake.arm("task_failed")
    with pytest.raises(ContentFiltered, match="NSFW content detected"):
        generate(provider(fake))


def test_failed_task_for_a_bad_parameter_is_invalid_request(fake: NovitaFake) -> None:
    """A task that failed on a parameter is InvalidRequest naming our field."""
    fake.fail_reason = "invalid parameter: sampler_name not supported by this model"
    fake.arm("task_failed")
    with pytest.raises(InvalidRequest) as info:
        generate(provider(fake))
    assert info.value.field == "sampler"


def test_size_below_novitas_minimum_is_refused_naming_width(fake: NovitaFake) -> None:
    """Novita's 400 for a 64-pixel side becomes InvalidRequest(field="width")."""
    with pytest.raises(InvalidRequest, match=r"\[128, 2048\]") as info:
        generate(provider(fake), REQUEST.model_copy(update={"width": 64}))
    assert info.value.field == "width"


def test_unknown_sampler_is_refused_before_submitting(fake: NovitaFake) -> None:
    """A sampler Novita does not list fails at once, naming the allowed ones."""
    with pytest.raises(InvalidRequest, match="DPM\\+\\+ 2M Karras") as info:
        generate(provider(fake), REQUEST.model_copy(update={"sampler": "Restart"}))
    assert info.value.field == "sampler"
    assert fake.counts["submit"] == 0


def test_one_failed_poll_does_not_lose_the_task(fake: NovitaFake) -> None:
    """A 500 on one poll is followed by another poll; the billed task is not abandoned."""
    fake.arm("get_result_failed")
    [image] = generate(provider(fake))
    assert image.seed == 7
    assert fake.counts["submit"] == 1


def test_cancel_stops_polling(fake: NovitaFake) -> None:
    """Cancelling ends the polling (Novita has no cancel endpoint); no poll follows."""
    fake.step_s = 0.5

    async def body() -> int:
        prov_task = asyncio.create_task(prov.generate(REQUEST, Deadline(10), None))
        for _ in range(500):  # until the task is being polled, 5 s at most
            if fake.counts["poll"]:
                break
            await asyncio.sleep(0.01)
        prov_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await prov_task
        polls = fake.counts["poll"]
        await asyncio.sleep(0.2)
        assert fake.counts["poll"] == polls
        return polls

    prov = provider(fake)
    assert drive(prov, body) >= 1


def test_deadline_while_polling_is_a_total_timeout(fake: NovitaFake) -> None:
    """A task still running at the deadline fails as Timeout(total) naming the task."""
    fake.step_s = 1.0
    prov = provider(fake)
    with pytest.raises(Timeout, match="did not finish") as info:
        drive(prov, lambda: prov.generate(REQUEST, Deadline(0.3), None))
    assert info.value.stage == "total"


def test_missing_key_variable_is_an_auth_error(
    fake: NovitaFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unset api_key_env variable fails before any request, naming the variable."""
    monkeypatch.delenv("NOVITA_API_KEY")
    with pytest.raises(AuthError, match="NOVITA_API_KEY"):
        generate(provider(fake))
    assert fake.counts["submit"] == 0


def test_probe_confirms_the_configured_checkpoint(fake: NovitaFake) -> None:
    """probe() lists checkpoints (GET /v3/model) and finds the configured one."""
    prov = provider(fake)
    assert drive(prov, lambda: prov.probe(Deadline(5))) == (
        "checkpoint sd_xl_base_1.0.safetensors available"
    )


def test_probe_refuses_an_unknown_checkpoint(fake: NovitaFake) -> None:
    """probe() with a model Novita does not list is InvalidRequest naming model."""
    prov = provider(fake, model="no-such-model.safetensors")
    with pytest.raises(InvalidRequest) as info:
        drive(prov, lambda: prov.probe(Deadline(5)))
    assert info.value.field == "model"


def test_describe_names_the_variable_not_the_key(fake: NovitaFake) -> None:
    """describe() shows the url and api_key_env, never the key; paid by default."""
    info = provider(fake).describe()
    assert info["api_key_env"] == "NOVITA_API_KEY"
    assert info["paid"] is True
    assert KEY not in repr(info)


def test_failure_after_the_task_was_accepted_is_not_resent(fake: NovitaFake) -> None:
    """A poll that breaks after Novita accepted the task may have been billed: no failover."""
    fake.arm("get_result_failed", times=10)
    provider = NovitaProvider("novita", NovitaConfig(url=fake.url, poll_interval_s=0.05))
    router = Router(GatewaySettings(route=["novita"]), {"novita": provider})

    async def scenario() -> None:
        try:
            request = ImageRequest(prompt="x", width=128, height=128)
            await router.run(request, ["novita"], Deadline(10))
        finally:
            await router.aclose()
            await provider.aclose()

    with pytest.raises(AllProvidersFailed, match="may have billed"):
        asyncio.run(scenario())
