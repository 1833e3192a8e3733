"""The Gateway, its sync twin and imagegate.generate(): same answers, every attempt stored."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest
from PIL import Image

import imagegate
from imagegate import Gateway, ImageRequest, ImageResult, SyncGateway, load_config
from imagegate.errors import InvalidRequest
from imagegate.store import Store


@pytest.fixture
def tiny_config(isolated_env: Path, tiny_model: Path) -> Path:
    """./imagegate.toml whose local provider is the tiny saved pipeline."""
    path = isolated_env / "imagegate.toml"
    path.write_text(f'[providers.local]\ntype = "diffusers"\nmodel = "{tiny_model}"\n')
    return path


REQUEST = ImageRequest(prompt="a lighthouse", width=64, height=64, steps=2, seed=5)


def pixels(png: bytes) -> bytes:
    with Image.open(io.BytesIO(png)) as img:
        return img.convert("RGB").tobytes()


def test_sync_and_async_gateways_make_the_same_image(tiny_config: Path) -> None:
    """SyncGateway and Gateway give the same pixels and seed for the same request."""

    async def run_async() -> ImageResult:
        async with Gateway(load_config()) as gateway:
            return await gateway.generate(REQUEST)

    with SyncGateway(load_config()) as sync_gateway:
        sync_result = sync_gateway.generate(REQUEST)
    async_result = asyncio.run(run_async())
    assert [i.seed for i in sync_result.images] == [i.seed for i in async_result.images] == [5]
    assert pixels(sync_result.images[0].png) == pixels(async_result.images[0].png)
    assert (sync_result.provider, async_result.provider) == ("local", "local")


def test_generate_one_liner_uses_the_default_configuration(tiny_config: Path) -> None:
    """imagegate.generate(prompt, **fields) answers with stored images and attempts."""
    result = imagegate.generate("a lighthouse", width=64, height=64, steps=1, seed=9)
    assert [img.seed for img in result.images] == [9]
    assert [a.outcome for a in result.attempts] == ["ok"]


def test_every_generation_is_recorded_with_its_attempts(tiny_config: Path) -> None:
    """The store holds one succeeded job per generation, with the attempts and the seed."""

    async def scenario() -> tuple[str, int | None, list[str]]:
        async with Gateway(load_config()) as gateway:
            result = await gateway.generate(REQUEST)
            assert gateway.store is not None
            job = await gateway.store.get_job(result.job_id or "")
        assert job is not None
        return job.status, job.seed, [a["outcome"] for a in job.attempts]

    assert asyncio.run(scenario()) == ("succeeded", 5, ["ok"])


def test_pinning_an_unknown_provider_names_the_allowed_ones(tiny_config: Path) -> None:
    """provider = "nope" is refused before anything runs, listing the configured names."""

    async def scenario() -> None:
        async with Gateway(load_config()) as gateway:
            await gateway.generate(REQUEST.model_copy(update={"provider": "nope"}))

    with pytest.raises(InvalidRequest, match="local"):
        asyncio.run(scenario())


def test_history_survives_a_new_store(tiny_config: Path) -> None:
    """What one gateway stored, a later Store on the same data dir lists."""
    with SyncGateway(load_config()) as gateway:
        gateway.generate(REQUEST)

    async def listing() -> list[str]:
        async with Store(load_config().data_dir) as store:
            return [job.request["prompt"] for job in await store.list_jobs()]

    assert asyncio.run(listing()) == ["a lighthouse"]
