"""The a1111 provider against a loopback AUTOMATIC1111 API (tests/vendor_a1111.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import fakekit
import pytest
from conformance import CANARY_ENV
from fakekit import drive
from faults import serve_app
from vendor_a1111 import A1111Fake, a1111_provider

from imagegate.errors import AuthError, InvalidRequest, Timeout, Unavailable, UpstreamError
from imagegate.providers.a1111 import A1111Provider
from imagegate.providers.base import Deadline, Progress
from imagegate.request import GeneratedImage, ImageRequest

REQUEST = ImageRequest(prompt="a lighthouse", width=64, height=64, steps=2, seed=7)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[A1111Fake, str]]:
    """The fake behind --api-auth alice:s3cret-pass, and its base URL."""
    monkeypatch.setenv(CANARY_ENV, "alice:s3cret-pass")
    state = A1111Fake(auth=("alice", "s3cret-pass"))
    with serve_app(state.app()) as base:
        yield state, base


def generate(provider: A1111Provider, req: ImageRequest = REQUEST) -> list[GeneratedImage]:
    return fakekit.generate(provider, req)


def failure(provider: A1111Provider, req: ImageRequest = REQUEST) -> Exception:
    return fakekit.failure(provider, req)


def test_body_carries_the_request_in_a1111_names(fake: tuple[A1111Fake, str]) -> None:
    """The txt2img body uses A1111's field names and asks for images back, unsaved."""
    state, base = fake
    req = REQUEST.model_copy(update={"n": 2, "guidance": 5.5, "sampler": "DDIM"})
    generate(a1111_provider(base, model="sd15-random.safetensors"), req)
    body = state.bodies[0]
    assert body["batch_size"] == 2
    assert body["cfg_scale"] == 5.5
    assert body["sampler_name"] == "DDIM"
    assert body["seed"] == 7
    assert body["override_settings"] == {"sd_model_checkpoint": "sd15-random.safetensors"}
    assert (body["send_images"], body["save_images"]) == (True, False)


def test_without_a_seed_one_is_picked_and_reported(fake: tuple[A1111Fake, str]) -> None:
    """No seed: the provider sends a real one (never -1) and reports the server's all_seeds."""
    state, base = fake
    req = REQUEST.model_copy(update={"seed": None, "n": 2})
    images = generate(a1111_provider(base), req)
    sent = state.bodies[0]["seed"]
    assert sent != -1
    assert [img.seed for img in images] == [sent, sent + 1]


def test_config_defaults_fill_steps_sampler_and_guidance(fake: tuple[A1111Fake, str]) -> None:
    """A request without steps/sampler/guidance gets the web UI's 20, Euler a, 7."""
    state, base = fake
    provider = a1111_provider(base)
    req = ImageRequest(prompt="x", width=64, height=64)
    assert provider.effective_params(req) == {
        "steps": 20,
        "sampler": "Euler a",
        "scheduler": None,
        "guidance": 7.0,
    }
    state.step_s = 0.0
    generate(provider, req)
    assert state.bodies[0]["steps"] == 20
    assert state.bodies[0]["sampler_name"] == "Euler a"


def test_wrong_credentials_are_an_auth_error(fake: tuple[A1111Fake, str]) -> None:
    """HTTP Basic that --api-auth refuses is AuthError, without the password in it."""
    state, base = fake
    state.auth = ("alice", "another")
    error = failure(a1111_provider(base))
    assert isinstance(error, AuthError)
    assert "s3cret-pass" not in str(error)


def test_value_without_a_colon_is_the_password(
    fake: tuple[A1111Fake, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """auth_env = "KEY" sends an empty user and KEY as password (imagegate's own server)."""
    state, base = fake
    state.auth = ("", "just-a-key-123")
    monkeypatch.setenv(CANARY_ENV, "just-a-key-123")
    assert len(generate(a1111_provider(base))) == 1


def test_progress_follows_the_sampling_steps(fake: tuple[A1111Fake, str]) -> None:
    """Polling /progress reports rising steps of the running job, ending complete."""
    state, base = fake
    state.step_s = 0.05
    seen: list[Progress] = []
    provider = a1111_provider(base, progress_interval_s=0.05)
    req = REQUEST.model_copy(update={"steps": 8})
    drive(provider, lambda: provider.generate(req, Deadline(10), seen.append))
    steps = [p.step for p in seen]
    assert len(steps) >= 3
    assert steps == sorted(steps)
    assert seen[-1] == Progress(8, 8)


def test_cancel_interrupts_the_server(fake: tuple[A1111Fake, str]) -> None:
    """Cancelling the task posts /interrupt, and the server stops the job early."""
    state, base = fake
    provider = a1111_provider(base)

    async def body() -> None:
        task = asyncio.create_task(
            provider.generate(REQUEST.model_copy(update={"steps": 100}), Deadline(10), None)
        )
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(50):
            if not state.busy:
                break
            await asyncio.sleep(0.02)

    drive(provider, body)
    assert state.interrupts == 1
    assert not state.busy
    assert state.step < 100


def test_one_request_at_a_time_reaches_the_server(fake: tuple[A1111Fake, str]) -> None:
    """Three concurrent generations reach the server one after another."""
    state, base = fake
    provider = a1111_provider(base)

    async def body() -> None:
        await asyncio.gather(*(provider.generate(REQUEST, Deadline(10), None) for _ in range(3)))

    drive(provider, body)
    assert len(state.bodies) == 3
    assert state.max_inflight == 1


def test_waiting_for_the_server_counts_against_the_deadline(fake: tuple[A1111Fake, str]) -> None:
    """A request queued behind a long one times out at its own deadline, never sent."""
    state, base = fake
    provider = a1111_provider(base)

    async def body() -> tuple[BaseException | None, float]:
        long = asyncio.create_task(
            provider.generate(REQUEST.model_copy(update={"steps": 40}), Deadline(10), None)
        )
        await asyncio.sleep(0.1)
        started = time.monotonic()
        try:
            await provider.generate(REQUEST, Deadline(0.3), None)
        except Timeout as exc:
            error: BaseException | None = exc
        else:
            error = None
        waited = time.monotonic() - started
        await long
        return error, waited

    error, waited = drive(provider, body)
    assert isinstance(error, Timeout)
    assert waited < 0.6
    assert len(state.bodies) == 1


def test_api_not_enabled_says_to_start_with_api(fake: tuple[A1111Fake, str]) -> None:
    """404 on /sdapi (no --api) is Unavailable whose message says to restart with --api."""
    state, base = fake
    state.arm("no_api")
    error = failure(a1111_provider(base))
    assert isinstance(error, Unavailable)
    assert "--api" in str(error)


def test_sampler_not_found_of_older_servers_is_an_invalid_sampler(
    fake: tuple[A1111Fake, str],
) -> None:
    """An older A1111's 400 "Sampler not found" is InvalidRequest(field="sampler")."""
    state, base = fake
    state.arm("sampler_not_found")
    error = failure(a1111_provider(base), REQUEST.model_copy(update={"sampler": "Nope"}))
    assert isinstance(error, InvalidRequest)
    assert error.field == "sampler"


def test_the_record_is_the_sampler_a1111_ran(fake: tuple[A1111Fake, str]) -> None:
    """A1111 1.10 runs its default for an unknown sampler: the record names that one."""
    _, base = fake
    [image] = generate(a1111_provider(base), REQUEST.model_copy(update={"sampler": "Nope"}))
    assert image.reported is not None
    assert image.reported.sampler == "DPM++ 2M"
    assert "Sampler: DPM++ 2M," in (image.reported.infotext or "")


def test_provenance_is_what_a1111_reports(fake: tuple[A1111Fake, str]) -> None:
    """Model, hash, sampler, scheduler, steps and A1111's own infotext come from its info."""
    _, base = fake
    req = REQUEST.model_copy(update={"sampler": "DPM++ 2M", "scheduler": "karras"})
    [image] = generate(a1111_provider(base, model="sd15-random.safetensors"), req)
    reported = image.reported
    assert reported is not None
    assert (reported.model, reported.model_hash) == ("sd15-random", "812273d380")
    assert (reported.sampler, reported.scheduler, reported.steps) == ("DPM++ 2M", "karras", 2)
    assert "Schedule type: Karras" in (reported.infotext or "")
    assert "Model hash: 812273d380" in (reported.infotext or "")


def test_scheduler_is_sent_both_ways_a1111_reads_it(fake: tuple[A1111Fake, str]) -> None:
    """scheduler 'karras' goes as the 1.9+ field and as the old combined sampler name."""
    state, base = fake
    generate(a1111_provider(base), REQUEST.model_copy(update={"sampler": "Euler"}))
    generate(
        a1111_provider(base),
        REQUEST.model_copy(update={"sampler": "DPM++ 2M", "scheduler": "karras"}),
    )
    assert "scheduler" not in state.bodies[0]
    assert state.bodies[1]["sampler_name"] == "DPM++ 2M Karras"
    assert state.bodies[1]["scheduler"] == "karras"


def test_a_checkpoint_a1111_did_not_load_is_an_invalid_request(
    fake: tuple[A1111Fake, str],
) -> None:
    """A1111 answers 200 with the loaded model for an unknown checkpoint: imagegate refuses
    it, naming the model and the checkpoints the server has."""
    _, base = fake
    error = failure(a1111_provider(base, model="nope.safetensors"))
    assert isinstance(error, InvalidRequest)
    assert error.field == "model"
    assert "nope.safetensors" in str(error)
    assert "sd15-random.safetensors" in str(error)


def test_validation_error_names_the_request_field(fake: tuple[A1111Fake, str]) -> None:
    """422 on cfg_scale names the request's field, guidance."""
    state, base = fake
    state.arm("validation")
    error = failure(a1111_provider(base))
    assert isinstance(error, InvalidRequest)
    assert error.field == "guidance"


def test_server_error_quotes_the_exception(fake: tuple[A1111Fake, str]) -> None:
    """500 {error, errors} is UpstreamError quoting A1111's exception."""
    state, base = fake
    state.arm("server_error")
    error = failure(a1111_provider(base))
    assert isinstance(error, UpstreamError)
    assert "OutOfMemoryError" in str(error)
    assert "CUDA out of memory" in str(error)


def test_probe_counts_checkpoints_and_names_the_loaded_one(fake: tuple[A1111Fake, str]) -> None:
    """probe() reads /sd-models and /options: "2 checkpoints, loaded: TITLE"."""
    _, base = fake
    provider = a1111_provider(base)
    assert drive(provider, lambda: provider.probe(Deadline(5))) == (
        "2 checkpoints, loaded: sd15-random-b.safetensors [cd5a484377]"
    )


@pytest.mark.parametrize(
    "model",
    ["sd15-random.safetensors", "sd15-random", "sd15-random.safetensors [812273d380]"],
)
def test_probe_matches_a_checkpoint_as_a1111_does_fresh_and_after_a_load(
    fake: tuple[A1111Fake, str], model: str
) -> None:
    """File name, model name or title with hash: found before the checkpoint was ever
    loaded (title without hash) and after (title with hash)."""
    state, base = fake
    provider = a1111_provider(base, model=model)
    assert state.sd_models()[1]["title"] == "sd15-random.safetensors"
    assert str(drive(provider, lambda: provider.probe(Deadline(5)))).startswith("2 checkpoints")
    generate(provider)
    assert state.sd_models()[1]["title"] == "sd15-random.safetensors [812273d380]"
    assert str(drive(provider, lambda: provider.probe(Deadline(5)))).startswith("2 checkpoints")


def test_probe_names_a_missing_checkpoint(fake: tuple[A1111Fake, str]) -> None:
    """A configured checkpoint the server lacks fails the probe naming the model."""
    _, base = fake
    provider = a1111_provider(base, model="not-there")
    with pytest.raises(InvalidRequest) as info:
        drive(provider, lambda: provider.probe(Deadline(5)))
    assert info.value.field == "model"


def test_seeds_come_from_the_info_string(fake: tuple[A1111Fake, str]) -> None:
    """The seeds reported are info.all_seeds, parsed from A1111's JSON string."""
    state, base = fake
    state.all_seeds = [101, 202, 303]
    images = generate(a1111_provider(base), REQUEST.model_copy(update={"n": 3}))
    assert [img.seed for img in images] == [101, 202, 303]


def test_unpaid_by_default_and_describe_holds_no_secret(fake: tuple[A1111Fake, str]) -> None:
    """An a1111 provider is free unless configured otherwise; describe() shows no password."""
    _, base = fake
    provider = a1111_provider(base)
    assert provider.paid is False
    assert "s3cret" not in repr(provider.describe())
