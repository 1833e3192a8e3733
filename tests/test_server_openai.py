"""The OpenAI images API, driven by the official `openai` client against a live server."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from faults import serve_app
from PIL import Image
from serverkit import NUMPY_COPY_WARNING, Fake, Live, fake_settings, live, tiny_settings
from vendor_openai import OpenAIFake

from imagegate.config import parse_settings
from imagegate.errors import ConnectError
from imagegate.store import read_metadata

pytestmark = pytest.mark.filterwarnings(NUMPY_COPY_WARNING)


@pytest.fixture(scope="module")
def local_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """A live server on the tiny local diffusers pipeline, shared by this module."""
    with pytest.MonkeyPatch.context() as mp:
        for leaked in ("IMAGEGATE_ROUTE", "IMAGEGATE_CONFIG"):  # a .env another test loaded
            mp.delenv(leaked, raising=False)
        mp.setenv("IMAGEGATE_DATA_DIR", str(tmp_path_factory.mktemp("openai-data")))
        with live(tiny_settings(tiny_model)) as server:
            yield server


@pytest.fixture
def oai(local_server: Live) -> Iterator[openai.OpenAI]:
    """The official client pointed at the local-pipeline server."""
    with client(local_server) as c:
        yield c


def client(server: Live) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_b64_json_answer_is_a_png_with_parameters(oai: openai.OpenAI, local_server: Live) -> None:
    """b64_json images decode to PNGs carrying the A1111 parameters chunk."""
    result = oai.images.generate(prompt="a lighthouse", response_format="b64_json", size="64x64")
    assert result.data is not None
    assert result.data[0].b64_json is not None
    png = base64.b64decode(result.data[0].b64_json)
    parameters, provenance = read_metadata(png)
    assert parameters is not None
    assert parameters.startswith("a lighthouse")
    assert provenance is not None
    assert provenance["provider"] == "local"


def test_url_answer_points_at_the_stored_image(oai: openai.OpenAI, local_server: Live) -> None:
    """response_format=url gives a /v1/images/{id} URL that serves the PNG."""
    result = oai.images.generate(prompt="a fox", response_format="url")
    assert result.data is not None
    assert result.data[0].url is not None
    url = result.data[0].url
    assert url.startswith(f"{local_server.url}/v1/images/")
    image = httpx.get(url)
    assert image.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(image.content)).format == "PNG"


def test_n_gives_that_many_images_with_consecutive_seeds(
    oai: openai.OpenAI, local_server: Live
) -> None:
    """n=2 with a seed (an extension field) gives two images, seed and seed + 1."""
    raw = oai.images.with_raw_response.generate(
        prompt="two foxes", n=2, extra_body={"seed": 42, "negative_prompt": "blurry"}
    )
    result = raw.parse()
    assert result.data is not None
    assert len(result.data) == 2
    seeds = []
    for item in result.data:
        assert item.b64_json is not None
        parameters, _ = read_metadata(base64.b64decode(item.b64_json))
        assert parameters is not None
        assert "Negative prompt: blurry" in parameters
        seeds.append(int(parameters.split("Seed: ")[1].split(",")[0]))
    assert seeds == [42, 43]
    assert raw.headers["x-imagegate-provider"] == "local"
    assert raw.headers["x-imagegate-attempts"] == "1"


def test_model_names_a_provider(oai: openai.OpenAI, local_server: Live) -> None:
    """model='local' pins the provider; /v1/models lists the route and the providers."""
    models = oai.models.list()
    assert [m.id for m in models.data] == ["route", "local"]
    result = oai.images.generate(prompt="a fox", model="local")
    assert result.data is not None
    assert len(result.data) == 1


def test_bad_size_is_a_400_naming_the_field(oai: openai.OpenAI, local_server: Live) -> None:
    """An odd size is refused as BadRequestError with param 'size', OpenAI's error shape."""
    with pytest.raises(openai.BadRequestError) as caught:
        oai.images.generate(prompt="a fox", size="65x64")
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["param"] == "size"
    assert body["type"] == "InvalidRequest"


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8"])
def test_a_json_body_is_answered_alike_with_or_without_a_charset(
    local_server: Live, content_type: str
) -> None:
    """The same body gets the same images and the same refusal whatever the JSON content type
    says (the plain one takes the route's direct path, the other FastAPI's handler)."""
    url = f"{local_server.url}/v1/images/generations"
    good = b'{"prompt": "a fox", "size": "64x64", "seed": 3, "response_format": "b64_json"}'
    bad = b'{"prompt": "a fox", "seed": "3"}'
    headers = {"content-type": content_type}
    answer = httpx.post(url, content=good, headers=headers, timeout=60)
    assert answer.status_code == 200
    assert answer.json()["data"][0]["b64_json"]
    refused = httpx.post(url, content=bad, headers=headers, timeout=60)
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "seed"


def test_unknown_model_is_a_400_naming_the_field(oai: openai.OpenAI, local_server: Live) -> None:
    """A model that is no provider is refused, with param 'model' and the allowed names."""
    with pytest.raises(openai.BadRequestError) as caught:
        oai.images.generate(prompt="a fox", model="dall-e-3")
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["param"] == "model"
    assert "local" in caught.value.message


def test_failover_shows_in_headers_and_attempts(tmp_path: Path) -> None:
    """A refused first provider fails over: the answer names the second and counts 2 attempts."""
    down = Fake("down", fail=lambda: ConnectError("refused; start it"))
    providers = {"down": down, "up": Fake("up")}
    with live(fake_settings(["down", "up"]), providers) as server, client(server) as c:
        raw = c.images.with_raw_response.generate(prompt="a fox")
    assert raw.headers["x-imagegate-provider"] == "up"
    assert raw.headers["x-imagegate-attempts"] == "2"


def test_when_every_provider_fails_the_error_carries_attempts(tmp_path: Path) -> None:
    """All providers down: 502 with the attempts, and x-should-retry: false for the client."""
    fail = lambda: ConnectError("refused; start it")  # noqa: E731
    providers = {"a": Fake("a", fail=fail), "b": Fake("b", fail=fail)}
    with (
        live(fake_settings(["a", "b"]), providers) as server,
        client(server) as c,
        pytest.raises(openai.InternalServerError) as caught,
    ):
        c.images.generate(prompt="a fox")
    error = caught.value
    assert error.status_code == 502
    assert error.response.headers["x-should-retry"] == "false"
    assert isinstance(error.body, dict)
    assert error.body["type"] == "AllProvidersFailed"
    assert [a["provider"] for a in error.body["attempts"]][:2] == ["a", "b"]


def test_default_config_sends_concurrent_requests_upstream_together() -> None:
    """Four requests at once reach an OpenAI-type upstream together with no concurrency key."""
    fake = OpenAIFake(delay_s=1.0)
    with serve_app(fake.app()) as upstream:
        settings = parse_settings(
            {
                "gateway": {"route": ["oai"]},
                "providers": {
                    "oai": {"type": "openai", "url": f"{upstream}/v1", "api_key_env": None}
                },
            }
        )
        with live(settings) as server, client(server) as c, ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: c.images.generate(prompt="a fox"), range(4)))
    assert all(a.data for a in answers)
    assert fake.max_in_flight == 4
