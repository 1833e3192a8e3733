"""Presigned image URLs: with auth on, image URLs in answers fetch with a plain GET until they
expire; a tampered or expired one is a 403."""

from __future__ import annotations

import io
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image
from serverkit import Fake, Live, fake_settings, live

from imagegate.server.presign import SIGNING_FILE, UrlSigner

KEY = "sk-presign-test"


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch) -> Iterator[Live]:
    """A server with API keys on and no URL secret in the environment."""
    monkeypatch.setenv("IMAGEGATE_API_KEYS", KEY)
    monkeypatch.delenv("IMAGEGATE_URL_SECRET", raising=False)
    with live(fake_settings(["a"]), {"a": Fake("a")}) as server:
        yield server


def _url(server: Live) -> str:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0) as client:
        result = client.images.generate(prompt="a fox", response_format="url")
    assert result.data is not None
    assert result.data[0].url is not None
    return result.data[0].url


def _signer(server: Live) -> UrlSigner:
    signer = server.app.state.ctx.signer
    assert isinstance(signer, UrlSigner)
    return signer


def test_an_openai_url_answer_fetches_with_a_plain_get(keyed: Live) -> None:
    """The URL from response_format=url downloads without a key, as OpenAI's do."""
    url = _url(keyed)
    assert "expires=" in url
    assert "signature=" in url
    answer = httpx.get(url)
    assert answer.status_code == 200
    assert Image.open(io.BytesIO(answer.content)).format == "PNG"


def test_without_a_signature_the_image_still_needs_the_key(keyed: Live) -> None:
    """The same image without the query is a 401; with the key it is served."""
    bare = _url(keyed).split("?")[0]
    assert httpx.get(bare).status_code == 401
    assert httpx.get(bare, headers={"authorization": f"Bearer {KEY}"}).status_code == 200


def test_a_tampered_signature_is_a_403(keyed: Live) -> None:
    """Changing one character of the signature or the expiry gets a 403, no image."""
    url = _url(keyed)
    flipped = url[:-1] + ("A" if url[-1] != "A" else "B")
    answer = httpx.get(flipped)
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "invalid_signature"
    query = url.split("?")[1]
    expires = int(query.split("expires=")[1].split("&")[0])
    longer = url.replace(f"expires={expires}", f"expires={expires + 3600}")
    assert httpx.get(longer).status_code == 403


def test_a_signature_for_one_image_does_not_open_another(keyed: Live) -> None:
    """The query of image A on image B's path is a 403."""
    first, second = _url(keyed), _url(keyed)
    other = second.split("?")[0] + "?" + first.split("?")[1]
    assert httpx.get(other).status_code == 403


def test_an_expired_url_is_a_403_naming_the_expiry(keyed: Live) -> None:
    """A correctly signed URL whose expiry has passed is a 403 saying it expired."""
    base = _url(keyed).split("?")[0]
    image_id = base.rsplit("/", 1)[1]
    stale = _signer(keyed).query(image_id, now=time.time() - 2 * 3600)
    answer = httpx.get(f"{base}?{stale}")
    assert answer.status_code == 403
    assert "expired" in answer.json()["error"]["message"]


def test_job_and_history_urls_are_presigned(keyed: Live) -> None:
    """GET /v1/jobs/{id} and GET /v1/images give URLs that fetch without a key."""
    auth = {"authorization": f"Bearer {KEY}"}
    _url(keyed)
    listing = httpx.get(f"{keyed.url}/v1/images", headers=auth).json()["data"]
    assert httpx.get(listing[0]["url"]).status_code == 200
    job = httpx.get(f"{keyed.url}/v1/jobs", headers=auth).json()["data"][0]
    assert httpx.get(job["images"][0]["url"]).status_code == 200


def test_the_generated_secret_is_owner_only_and_survives_a_restart(
    monkeypatch: pytest.MonkeyPatch, isolated_env: Path
) -> None:
    """Without IMAGEGATE_URL_SECRET a secret is written once (mode 0600) and reused."""
    monkeypatch.setenv("IMAGEGATE_API_KEYS", KEY)
    monkeypatch.delenv("IMAGEGATE_URL_SECRET", raising=False)
    with live(fake_settings(["a"]), {"a": Fake("a")}) as first:
        url = _url(first)
        secret = Path(first.gateway.settings.data_dir) / SIGNING_FILE
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        written = secret.read_bytes()
    with live(fake_settings(["a"]), {"a": Fake("a")}) as second:
        assert secret.read_bytes() == written
        path_and_query = url.split("/", 3)[3]
        assert httpx.get(f"{second.url}/{path_and_query}").status_code == 200


def test_a_secret_from_the_environment_signs_and_no_file_is_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With IMAGEGATE_URL_SECRET set, URLs verify with it and no secret file appears."""
    monkeypatch.setenv("IMAGEGATE_API_KEYS", KEY)
    monkeypatch.setenv("IMAGEGATE_URL_SECRET", "shared-by-every-replica")
    with live(fake_settings(["a"]), {"a": Fake("a")}) as server:
        url = _url(server)
        image_id = url.split("?")[0].rsplit("/", 1)[1]
        query = url.split("?")[1]
        mine = UrlSigner(b"shared-by-every-replica", 3600)
        assert mine.check(image_id, query.encode()) is None
        assert not (Path(server.gateway.settings.data_dir) / SIGNING_FILE).exists()


def test_with_auth_off_urls_are_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    """No keys: the URL has no query, and no secret is made."""
    with live(fake_settings(["a"]), {"a": Fake("a")}) as server:
        with openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0) as client:
            result = client.images.generate(prompt="a fox", response_format="url")
        assert result.data is not None
        assert result.data[0].url is not None
        assert "?" not in result.data[0].url
        assert not (Path(server.gateway.settings.data_dir) / SIGNING_FILE).exists()
