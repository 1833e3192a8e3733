"""Every provider, local and remote, passes the same checks (see tests/conformance.py)."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TypeVar

import pytest
from conformance import CANARY, CANARY_ENV, Setup, load_cases
from fakekit import drive, solid_png
from PIL import Image

from imagegate.config import Settings
from imagegate.errors import ImagegateError, InvalidRequest, ProviderError, Timeout
from imagegate.gateway import Gateway
from imagegate.providers.base import Deadline, Progress
from imagegate.request import ImageRequest, InputImage

T = TypeVar("T")
CASES = load_cases()
REQUEST = ImageRequest(prompt="a lighthouse", width=64, height=64, steps=2, seed=11)


@pytest.fixture(params=sorted(CASES))
def setup(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    """One provider wired to its fake, with the canary key in the environment."""
    monkeypatch.setenv(CANARY_ENV, CANARY)
    with ExitStack() as stack:
        yield CASES[request.param](request, stack)


def generate(setup: Setup, req: ImageRequest = REQUEST) -> list[int]:
    async def body() -> list[int]:
        images = await setup.provider.generate(req, Deadline(30), None)
        return [img.seed for img in images]

    return drive(setup.provider, body)


def test_success_returns_images_with_the_seed(setup: Setup) -> None:
    """A plain request returns one PNG and reports the seed asked for."""
    assert generate(setup) == [11]


def test_random_seed_is_reported(setup: Setup) -> None:
    """With no seed given, the seed used is still reported."""
    seeds = generate(setup, REQUEST.model_copy(update={"seed": None}))
    assert len(seeds) == 1
    assert 0 <= seeds[0] < 2**32


def test_n_images_come_back(setup: Setup) -> None:
    """n = 2 gives two images, each with its own seed."""
    if not setup.supports_n:
        pytest.xfail("this provider's API makes one image per request")
    seeds = generate(setup, REQUEST.model_copy(update={"n": 2}))
    assert len(seeds) == 2
    assert len(set(seeds)) == 2


def test_cancel_ends_the_attempt_promptly(setup: Setup) -> None:
    """Cancelling the caller's task ends the attempt with CancelledError, within seconds."""

    if setup.slow is not None:
        setup.slow()

    async def body() -> float:
        slow = REQUEST.model_copy(update={"steps": 40})
        task = asyncio.create_task(setup.provider.generate(slow, Deadline(30), None))
        await asyncio.sleep(0.2)
        task.cancel()
        started = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - started

    assert drive(setup.provider, body) < 3.0  # one step or one poll, on a busy 2-core box


def test_documented_errors_map_to_their_classes(setup: Setup) -> None:
    """Each documented error the vendor's API returns comes out as its tree class."""

    async def body() -> dict[str, ProviderError | None]:
        seen: dict[str, ProviderError | None] = {}
        for name in setup.errors:
            setup.arm(name)
            try:
                await setup.provider.generate(REQUEST, Deadline(30), None)
            except ProviderError as exc:
                seen[name] = exc
            else:
                seen[name] = None
        return seen

    for name, error in drive(setup.provider, body).items():
        expected = setup.errors[name]
        assert type(error) is expected, f"{name}: got {type(error).__name__}"
        assert error.provider == setup.provider.name
        assert CANARY not in str(error)


def test_tls_stall_is_a_tls_timeout_within_its_budget(setup: Setup, tls_stall: str) -> None:
    """A host that never answers the ClientHello fails as Timeout(tls) within its budget."""
    if setup.at_url is None:
        pytest.xfail("this provider makes no network connection")
    stalled = setup.at_url(tls_stall)
    started = time.monotonic()
    with pytest.raises(Timeout) as info:
        drive(stalled, lambda: stalled.generate(REQUEST, Deadline(30), None))
    assert info.value.stage == "tls"
    assert time.monotonic() - started < setup.tls_timeout_s + 1.0


def test_progress_reaches_the_last_step_or_is_silent(setup: Setup) -> None:
    """Reported progress never goes past its total and ends complete."""
    seen: list[Progress] = []

    async def body() -> None:
        await setup.provider.generate(REQUEST, Deadline(30), seen.append)
        await asyncio.sleep(0.05)  # progress may be delivered through the loop

    drive(setup.provider, body)
    assert all(p.step <= p.steps for p in seen)
    if seen:
        assert seen[-1].step == seen[-1].steps


def test_no_secret_in_errors_records_or_logs(
    setup: Setup, isolated_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The canary key appears in no error, stored record, image or log line."""
    caplog.set_level(logging.DEBUG)
    provider = setup.provider
    settings = Settings.model_validate({"gateway": {"route": [provider.name]}})

    async def scenario() -> list[str]:
        texts: list[str] = []
        async with Gateway(settings, providers={provider.name: provider}) as gateway:
            await gateway.generate(REQUEST)
            for name in setup.errors:
                setup.arm(name)
                try:
                    await gateway.generate(REQUEST)
                except ImagegateError as exc:
                    texts += [str(exc), repr(exc.attempts)]
        return texts

    for text in asyncio.run(scenario()):
        assert CANARY not in text
    assert CANARY not in caplog.text
    for path in (isolated_env / "data").rglob("*"):
        if path.is_file():
            assert CANARY.encode() not in path.read_bytes(), path


# --------------------------------------------------------------------------- edits


def _mask_png(size: int = 64) -> bytes:
    """An L mask, 255 = repaint: a white square in the middle of a black one."""
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    out = io.BytesIO()
    mask.save(out, format="PNG")
    return out.getvalue()


INIT = InputImage.from_bytes(solid_png(64, 64, (20, 120, 200)))
MASK = InputImage.from_bytes(_mask_png())
EDIT = REQUEST.model_copy(update={"width": None, "height": None, "images": (INIT,)})
"""An edit takes its size from the input image."""
EDITS = {
    "img2img": EDIT.model_copy(update={"strength": 0.5}),
    "inpaint": EDIT.model_copy(update={"strength": 0.5, "mask": MASK}),
    "variations": EDIT.model_copy(update={"variation": True}),
}


TASKS = ("img2img", "inpaint", "variations")


def test_each_declared_edit_returns_an_image_with_the_seed(setup: Setup) -> None:
    """Every edit task the provider declares (as configured for edits) returns one image and
    reports the seed asked; a provider that declares none is a text-to-image one."""
    editor = setup.editor or setup.provider
    declared = [task for task in TASKS if task in editor.capabilities]

    async def body(task: str) -> list[int]:
        images = await editor.generate(EDITS[task], Deadline(30), None)
        return [img.seed for img in images]

    for task in declared:
        seeds = drive(editor, lambda task=task: body(task))  # type: ignore[misc]
        assert len(seeds) == 1, task
        assert seeds[0] == 11 or task == "variations", task
    assert editor.capabilities <= {"txt2img", *TASKS}


def test_a_task_not_declared_is_refused_before_sending(setup: Setup) -> None:
    """A remote provider asked for a task it does not declare raises InvalidRequest naming
    it, before sending anything (the router skips it first; this guards a direct call). A
    local provider sends nothing: the router's skip is its guard."""
    provider = setup.provider
    for task in (t for t in TASKS if t not in provider.capabilities):
        if setup.at_url is None:
            continue
        with pytest.raises(InvalidRequest) as info:
            drive(provider, lambda task=task: provider.generate(EDITS[task], Deadline(30), None))  # type: ignore[misc]
        assert task in str(info.value)


def test_documented_edit_errors_map_to_their_classes(setup: Setup) -> None:
    """Each documented error of the vendor's edit endpoints comes out as its tree class; a
    provider that edits over the network documents at least one."""
    editor = setup.editor or setup.provider
    edits_remotely = setup.at_url is not None and bool(editor.capabilities & set(TASKS))
    assert bool(setup.edit_errors) == edits_remotely
    task = "inpaint" if "inpaint" in editor.capabilities else "img2img"

    async def body() -> dict[str, ProviderError | None]:
        seen: dict[str, ProviderError | None] = {}
        for name in setup.edit_errors:
            setup.arm(name)
            try:
                await editor.generate(EDITS[task], Deadline(30), None)
            except ProviderError as exc:
                seen[name] = exc
            else:
                seen[name] = None
        return seen

    for name, error in drive(editor, body).items():
        expected = setup.edit_errors[name]
        assert type(error) is expected, f"{name}: got {type(error).__name__}"
        assert CANARY not in str(error)


def test_a_mixed_route_fails_over_only_through_capable_providers(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """Inpainting on hf-inference (no mask task) -> a1111 (fails) -> stability: the first is
    skipped with its reason, the second fails, the third answers."""
    monkeypatch.setenv(CANARY_ENV, CANARY)
    with ExitStack() as stack:
        names = ("hf-inference", "a1111", "stability")
        setups = [CASES[name](request, stack) for name in names]
        providers = {s.provider.name: s.provider for s in setups}
        setups[1].arm("server_error")
        settings = Settings.model_validate({"gateway": {"route": list(providers)}})

        async def scenario() -> tuple[str, list[tuple[str, str, str]]]:
            async with Gateway(settings, providers=providers) as gateway:
                result = await gateway.generate(EDITS["inpaint"])
            attempts = [
                (a.provider, str(a.outcome), a.error.message if a.error else "")
                for a in result.attempts
            ]
            return result.provider, attempts

        answered, attempts = asyncio.run(scenario())
    hf, sd, stability = (s.provider.name for s in setups)
    assert answered == stability
    assert [(p, o) for p, o, _ in attempts] == [(hf, "skipped"), (sd, "error"), (stability, "ok")]
    assert "inpaint" in attempts[0][2]
