"""The gradio provider against a real Gradio app and a fake Hub runtime API (all loopback)."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from conformance import CANARY, CANARY_ENV
from PIL import Image
from vendor_gradio import OUTSIDE, FakeHub, GradioApp, gradio_app

from imagegate.config import parse_settings
from imagegate.errors import (
    ConfigError,
    InvalidRequest,
    RateLimited,
    Unavailable,
)
from imagegate.providers.base import Deadline
from imagegate.providers.gradio import GradioConfig, GradioProvider
from imagegate.request import GeneratedImage, ImageRequest

T = TypeVar("T")
REQUEST = ImageRequest(prompt="a lighthouse", width=64, height=96, steps=2, seed=11)


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> GradioApp:
    """The session's Gradio app, its state reset, with the canary token in the environment."""
    monkeypatch.setenv(CANARY_ENV, CANARY)
    return gradio_app()


@pytest.fixture
def hub(app: GradioApp) -> Iterator[FakeHub]:
    """A fake Hub whose Space runs at the Gradio app's address."""
    with FakeHub(host=app.url) as fake:
        yield fake


def provider(**settings: Any) -> GradioProvider:
    config = {"token_env": CANARY_ENV, "tls_timeout_s": 0.5} | settings
    return GradioProvider("space", GradioConfig.model_validate(config))


def space(hub: FakeHub, **settings: Any) -> GradioProvider:
    config = {"space": "owner/tiny-space", "hub_url": hub.url, "wake_retry_after_s": 0.5}
    return provider(**(config | settings))


def run(target: GradioProvider, body: Callable[[], Awaitable[T]]) -> T:
    """Run ``body`` on one loop, then close the provider on it."""

    async def main() -> T:
        try:
            return await body()
        finally:
            await target.aclose()

    return asyncio.run(main())


def generate(target: GradioProvider, request: ImageRequest = REQUEST) -> list[GeneratedImage]:
    return run(target, lambda: target.generate(request, Deadline(20), None))


def wait_for(check: Callable[[], bool], within_s: float = 5.0) -> bool:
    """Poll ``check`` until it holds or ``within_s`` passes."""
    end = time.monotonic() + within_s
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.02)
    return check()


# -- the app's API --------------------------------------------------------------------------


def test_image_endpoint_is_found_and_fields_map_by_name(app: GradioApp) -> None:
    """Without api_name the endpoint that takes a prompt and returns an image is called."""
    [image] = generate(provider(url=app.url))
    assert (image.width, image.height, image.seed) == (64, 96, 11)
    assert app.state.paths("POST", "/gradio_api/call/infer")


def test_webp_output_comes_back_as_png(app: GradioApp) -> None:
    """The app's WebP image is re-encoded as PNG with its real size."""
    [image] = generate(provider(url=app.url))
    assert image.png.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(image.png)) as decoded:
        assert decoded.size == (64, 96)


def test_randomize_seed_is_turned_off_so_the_seed_holds(app: GradioApp) -> None:
    """A randomize_seed parameter is sent as False: the app uses (and reports) our seed."""
    [image] = generate(provider(url=app.url), REQUEST.model_copy(update={"seed": 1234}))
    assert image.seed == 1234


def test_params_map_request_fields_to_other_parameter_names(app: GradioApp) -> None:
    """params sends the prompt and seed to parameters named otherwise."""
    target = provider(
        url=app.url, api_name="/paint", params={"prompt": "description", "seed": "noise_seed"}
    )
    request = ImageRequest(prompt="abc", seed=7)
    [image] = generate(target, request)
    with Image.open(io.BytesIO(image.png)) as decoded:
        assert decoded.getpixel((0, 0)) == (7, 3, 0)
    assert image.seed == 7


def test_field_the_endpoint_lacks_is_refused(app: GradioApp) -> None:
    """A request field with no parameter to go to is an InvalidRequest naming it."""
    target = provider(url=app.url, api_name="paint", params={"prompt": "description"})
    with pytest.raises(InvalidRequest) as info:
        generate(target, ImageRequest(prompt="abc", steps=4))
    assert info.value.field == "steps"


def test_unknown_api_name_lists_the_endpoints(app: GradioApp) -> None:
    """An api_name the app does not have names the ones it has."""
    with pytest.raises(InvalidRequest) as info:
        generate(provider(url=app.url, api_name="/nope"))
    assert info.value.field == "api_name"
    assert "/infer" in str(info.value)
    assert "/paint" in str(info.value)


def test_params_naming_a_missing_parameter_is_refused(app: GradioApp) -> None:
    """params pointing at a parameter the endpoint lacks names the field and the choices."""
    with pytest.raises(InvalidRequest) as info:
        generate(provider(url=app.url, params={"prompt": "caption_text"}))
    assert info.value.field == "params.prompt"


def test_token_reaches_the_space_only_as_x_hf_authorization(app: GradioApp) -> None:
    """The HF token goes to the app as x-hf-authorization, never as Authorization."""
    generate(provider(url=app.url))
    for _, _, headers in app.state.seen:
        assert headers.get("x-hf-authorization") == f"Bearer {CANARY}"
        assert "authorization" not in headers


def test_cancel_closes_the_stream_and_tells_the_app(app: GradioApp) -> None:
    """Cancelling the task ends it at once and POSTs the event to the app's /cancel."""
    target = provider(url=app.url)

    async def body() -> float:
        slow = REQUEST.model_copy(update={"steps": 40})
        task = asyncio.create_task(target.generate(slow, Deadline(20), None))
        await asyncio.sleep(0.3)
        task.cancel()
        started = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await task
        ended = time.monotonic() - started
        await asyncio.sleep(0.3)  # the background cancel request
        return ended

    assert run(target, body) < 0.5
    assert wait_for(lambda: bool(app.state.paths("POST", "/gradio_api/cancel")))


def test_app_rate_limit_carries_retry_after(app: GradioApp) -> None:
    """A 429 from the app is RateLimited with the Retry-After it sent."""
    app.state.arm("rate_limited")
    with pytest.raises(RateLimited) as info:
        generate(provider(url=app.url))
    assert info.value.retry_after == 7


def test_the_app_never_reaches_beyond_the_loopback(app: GradioApp) -> None:
    """Starting and calling the Gradio app tries no address outside 127.0.0.1."""
    before = len(OUTSIDE)
    generate(provider(url=app.url))
    assert app.outside_at_start == []
    assert OUTSIDE[before:] == []


# -- the Space runtime ----------------------------------------------------------------------


def test_running_space_is_called_at_the_host_the_hub_names(app: GradioApp, hub: FakeHub) -> None:
    """A RUNNING Space is called at its Hub host; the Hub gets the token as Authorization."""
    [image] = generate(space(hub))
    assert image.seed == 11
    assert hub.requests[0]["authorization"] == f"Bearer {CANARY}"


def test_running_stage_is_cached_between_requests(app: GradioApp, hub: FakeHub) -> None:
    """Two requests in a row cost one Hub call: a RUNNING stage is trusted a few seconds."""
    target = space(hub)

    async def twice() -> None:
        await target.generate(REQUEST, Deadline(20), None)
        await target.generate(REQUEST, Deadline(20), None)

    run(target, twice)
    assert len(hub.requests) == 1


def test_sleeping_space_fails_at_once_and_is_woken_in_the_background(
    app: GradioApp, hub: FakeHub
) -> None:
    """SLEEPING: Unavailable(runtime) with the wake retry_after, no wait; the host gets a GET."""
    hub.stage = "SLEEPING"
    target = space(hub, wake_retry_after_s=42)

    async def body() -> tuple[Unavailable, float]:
        started = time.monotonic()
        with pytest.raises(Unavailable) as info:
            await target.generate(REQUEST, Deadline(20), None)
        elapsed = time.monotonic() - started
        for _ in range(100):  # the wake runs on this loop; give it a moment
            if app.state.paths("GET", "/config"):
                break
            await asyncio.sleep(0.02)
        return info.value, elapsed

    error, elapsed = run(target, body)
    assert (error.stage, error.retry_after) == ("runtime", 42)
    assert "SLEEPING" in str(error)
    assert "wake" in str(error)
    assert elapsed < 1.0
    assert app.state.paths("GET", "/config")
    assert not app.state.paths("POST", "/gradio_api/call/infer")


def test_sleeping_space_without_wake_is_left_asleep(app: GradioApp, hub: FakeHub) -> None:
    """wake = false: Unavailable that says how to wake it, and no request to the host."""
    hub.stage = "SLEEPING"
    with pytest.raises(Unavailable) as info:
        generate(space(hub, wake=False))
    assert "wake = true" in str(info.value)
    time.sleep(0.1)
    assert app.state.seen == []


@pytest.mark.parametrize(
    ("stage", "retry_after", "says"),
    [
        ("BUILDING", 0.5, "BUILDING"),
        ("APP_STARTING", 0.5, "APP_STARTING"),
        ("PAUSED", 300.0, "owner"),
        ("RUNTIME_ERROR", 300.0, "logs"),
    ],
)
def test_space_not_running_is_unavailable_naming_stage_and_fix(
    app: GradioApp, hub: FakeHub, stage: str, retry_after: float, says: str
) -> None:
    """Starting stages retry soon; paused or broken Spaces say who must act, and wait long."""
    hub.stage = stage
    with pytest.raises(Unavailable) as info:
        generate(space(hub))
    assert (info.value.stage, info.value.retry_after) == ("runtime", retry_after)
    assert says in str(info.value)


def test_probe_reports_stage_version_and_endpoint(app: GradioApp, hub: FakeHub) -> None:
    """probe() reads the stage and the app's /config and /info, and says what it found."""
    target = space(hub)
    detail = run(target, lambda: target.probe(Deadline(10)))
    assert detail is not None
    assert detail.startswith("RUNNING, gradio ")
    assert detail.endswith("endpoint /infer")


def test_probe_does_not_trust_a_cached_stage(app: GradioApp, hub: FakeHub) -> None:
    """After a request, a probe asks the Hub again: a Space that fell asleep shows."""
    target = space(hub)

    async def body() -> None:
        await target.generate(REQUEST, Deadline(20), None)
        hub.stage = "SLEEPING"
        with pytest.raises(Unavailable):
            await target.probe(Deadline(10))

    run(target, body)
    assert len(hub.requests) == 2


def test_unknown_space_names_the_space_setting(app: GradioApp, hub: FakeHub) -> None:
    """A 404 from the Hub is an InvalidRequest naming ``space``."""
    hub.status = 404
    with pytest.raises(InvalidRequest) as info:
        generate(space(hub))
    assert info.value.field == "space"


def test_hub_rate_limit_waits_for_the_ratelimit_reset(app: GradioApp, hub: FakeHub) -> None:
    """A 429 from the Hub is RateLimited for the ``t`` of its RateLimit header."""
    hub.status = 429
    hub.headers = {"ratelimit": '"api";r=0;t=42'}
    with pytest.raises(RateLimited) as info:
        generate(space(hub))
    assert info.value.retry_after == 42


# -- configuration --------------------------------------------------------------------------


def test_config_needs_a_space_or_a_url() -> None:
    """A gradio provider with neither space nor url is a ConfigError."""
    raw = {"gateway": {"route": ["s"]}, "providers": {"s": {"type": "gradio"}}}
    with pytest.raises(ConfigError, match="space"):
        parse_settings(raw)


def test_config_is_free_and_wakes_by_default() -> None:
    """A Space is unpaid and woken unless the config says otherwise."""
    config = GradioConfig(space="owner/name")
    assert (config.paid, config.wake, config.hub_url) == (False, True, "https://huggingface.co")


def test_endpoint_is_the_space_host_by_the_hub_rule() -> None:
    """Before the Hub answers, the host follows owner/na_me -> owner-na-me.hf.space."""
    assert provider(space="Owner/My_Space").endpoint() == "https://owner-my-space.hf.space"


def test_describe_names_the_space_without_the_token(app: GradioApp) -> None:
    """describe() shows space, url and wake, and never the token."""
    info = provider(space="owner/name", url=app.url).describe()
    assert info["space"] == "owner/name"
    assert info["url"] == app.url
    assert info["wake"] is True
    assert CANARY not in repr(info)
