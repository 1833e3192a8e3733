"""The web page at GET /, driven in Debian's chromium through Playwright.

Generate with live progress, reuse a history item, cancel, see failover and open breakers, work
with auth on and on a phone, and never reach past the server's own host.
"""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image
from serverkit import NUMPY_COPY_WARNING, Fake, Live, fake_settings, live, tiny_settings

from imagegate import request as limits
from imagegate.config import RouteSettings
from imagegate.errors import ConnectError
from imagegate.server import web

playwright_sync = pytest.importorskip("playwright.sync_api")

from playwright.sync_api import Browser, FilePayload, Page, expect  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-gpu",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
KEY = "sk-web-test"
WAIT_MS = 20_000

pytestmark = pytest.mark.filterwarnings(NUMPY_COPY_WARNING)
expect.set_options(timeout=WAIT_MS)  # the first image also loads the pipeline


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless chromium for the module (Debian's, never a downloaded one)."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no chromium at {CHROMIUM}: apt-get install -y chromium (.ci/run does)")
    with playwright_sync.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh desktop-sized page (no cookies, no localStorage)."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(WAIT_MS)
    yield context.new_page()
    context.close()


@pytest.fixture(scope="module")
def tiny(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """A server whose one provider is the tiny diffusers pipeline, 'local'."""
    with pytest.MonkeyPatch.context() as mp:
        for leaked in ("IMAGEGATE_ROUTE", "IMAGEGATE_CONFIG", "IMAGEGATE_API_KEYS"):
            mp.delenv(leaked, raising=False)
        mp.setenv("IMAGEGATE_DATA_DIR", str(tmp_path_factory.mktemp("web-data")))
        with live(tiny_settings(tiny_model)) as server:
            yield server


@pytest.fixture
def slow() -> Iterator[Live]:
    """A server whose one provider, 'slow', takes 100 steps of 50 ms."""
    with live(fake_settings(["slow"]), {"slow": Fake("slow", steps=100, step_s=0.05)}) as server:
        yield server


def refused() -> ConnectError:
    return ConnectError("connection refused by 127.0.0.1:9; start the server", provider="down")


@pytest.fixture
def failing() -> Iterator[Live]:
    """A server whose route is 'down' (connection refused) then 'up'."""
    providers = {"down": Fake("down", fail=refused), "up": Fake("up")}
    with live(fake_settings(["down", "up"]), providers) as server:
        yield server


def generate_on_page(page: Page, prompt: str, **fields: str) -> None:
    page.get_by_label("Prompt", exact=True).fill(prompt)
    for name, value in fields.items():
        page.locator(f"#{name}").fill(value)
    page.get_by_role("button", name="Generate").click()


def submit_and_wait(server: Live, **body: object) -> dict[str, object]:
    job_id = httpx.post(f"{server.url}/v1/jobs", json=body).json()["id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job: dict[str, object] = httpx.get(f"{server.url}/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def record_status(page: Page) -> None:
    """Keep every text the job status line shows in window.seen (steps pass quickly)."""
    page.evaluate(
        """() => {
            window.seen = [];
            const node = document.getElementById("job-status");
            new MutationObserver(() => window.seen.push(node.textContent))
                .observe(node, {childList: true, characterData: true, subtree: true});
        }"""
    )


def test_generating_shows_step_progress_then_the_image(tiny: Live, page: Page) -> None:
    """A prompt on the tiny pipeline shows its steps, then the image with seed and provider."""
    page.goto(tiny.url)
    record_status(page)
    generate_on_page(page, "a lighthouse at dusk", seed="5", steps="4")
    expect(page.locator("#job-status")).to_have_text(re.compile(r"^Done in .* on local"))
    seen: list[str] = page.evaluate("window.seen")
    assert any(text.startswith("Step 4 of 4") for text in seen), seen
    image = page.locator("#images img")
    expect(image).to_have_attribute("src", re.compile(r"^blob:"))
    assert page.evaluate("document.querySelector('#images img').naturalWidth") == 64
    expect(page.locator("#details")).to_contain_text("Seed5")
    expect(page.locator("#details")).to_contain_text("Providerlocal")


def test_a_history_item_fills_the_form_with_its_parameters(tiny: Live, page: Page) -> None:
    """Selecting a stored image puts its prompt, settings and seed back in the form."""
    submit_and_wait(
        tiny,
        prompt="a red boat",
        negative_prompt="blurry",
        width=64,
        height=72,
        steps=3,
        guidance=5.5,
        seed=42,
        sampler="Euler",
    )
    page.goto(tiny.url)
    page.get_by_role("button", name=re.compile(r"^Reuse: a red boat")).first.click()
    expect(page.locator("#prompt")).to_have_value("a red boat")
    expect(page.locator("#negative_prompt")).to_have_value("blurry")
    expect(page.locator("#seed")).to_have_value("42")
    expect(page.locator("#steps")).to_have_value("3")
    expect(page.locator("#height")).to_have_value("72")
    expect(page.locator("#guidance")).to_have_value("5.5")
    expect(page.locator("#sampler")).to_have_value("Euler")


def png_file(name: str, size: tuple[int, int] = (64, 64), colour: str = "#1478c8") -> FilePayload:
    """An uploaded PNG as Playwright hands it to a file input."""
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return {"name": name, "mimeType": "image/png", "buffer": buf.getvalue()}


def set_strength(page: Page, value: str) -> None:
    page.locator("#strength").evaluate(
        "(node, value) => { node.value = value; node.dispatchEvent(new Event('input', "
        "{bubbles: true})); }",
        value,
    )


def newest_job(server: Live) -> dict[str, Any]:
    job: dict[str, Any] = httpx.get(f"{server.url}/v1/jobs?limit=1").json()["data"][0]
    return job


def test_an_uploaded_image_is_edited_at_the_chosen_strength(tiny: Live, page: Page) -> None:
    """A picked image and the strength slider make an image-to-image job of that image."""
    upload = png_file("in.png")
    page.goto(tiny.url)
    page.locator("#edit summary").click()
    page.locator("#image").set_input_files(upload)
    expect(page.locator("#edit-preview")).to_be_visible()
    set_strength(page, "0.5")
    expect(page.locator("#edit-digest")).to_have_text("image · strength 0.5")
    generate_on_page(page, "a lighthouse in fog", steps="2")
    expect(page.locator("#job-status")).to_have_text(re.compile(r"^Done in .* on local"))
    request = newest_job(tiny)["request"]
    assert request["strength"] == 0.5
    assert request["images"][0]["sha256"] == hashlib.sha256(upload["buffer"]).hexdigest()


def test_an_image_dropped_on_the_form_is_the_image_to_edit(tiny: Live, page: Page) -> None:
    """Dropping an image file on the form puts it in the edit panel."""
    page.goto(tiny.url)
    page.locator("#prompt").evaluate(
        """(node) => {
            const canvas = document.createElement("canvas");
            canvas.width = canvas.height = 64;
            return new Promise((resolve) => canvas.toBlob((blob) => {
                const data = new DataTransfer();
                data.items.add(new File([blob], "dropped.png", {type: "image/png"}));
                node.dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true}));
                resolve();
            }, "image/png"));
        }"""
    )
    expect(page.locator("#edit-preview")).to_be_visible()
    expect(page.locator("#edit-digest")).to_have_text("image · strength 0.75")


def test_edit_this_on_a_history_image_edits_that_image(tiny: Live, page: Page) -> None:
    """ "Edit this" on a stored image puts it in the edit panel; Generate edits it."""
    made = submit_and_wait(tiny, prompt="a green kite", steps=2, seed=9)
    images = made["images"]
    assert isinstance(images, list)
    stored = httpx.get(f"{tiny.url}/v1/images/{images[0]['id']}").content
    page.goto(tiny.url)
    page.get_by_role("button", name=re.compile(r"^Edit this: a green kite")).first.click()
    expect(page.locator("#edit-preview")).to_be_visible()
    expect(page.locator("#prompt")).to_have_value("a green kite")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#job-status")).to_have_text(re.compile(r"^Done in .* on local"))
    request = newest_job(tiny)["request"]
    assert request["images"][0]["sha256"] == hashlib.sha256(stored).hexdigest()


def test_a_mask_of_another_size_is_refused_under_the_mask_field(tiny: Live, page: Page) -> None:
    """A mask whose size differs from the image's is shown under Mask; no job is made."""
    before = httpx.get(f"{tiny.url}/v1/jobs").json()["data"]
    page.goto(tiny.url)
    page.locator("#edit summary").click()
    page.locator("#image").set_input_files(png_file("in.png"))
    page.locator("#mask").set_input_files(png_file("mask.png", (32, 32), "#ffffff"))
    generate_on_page(page, "a lighthouse", steps="2")
    expect(page.locator("#err-mask")).to_contain_text("64x64")
    expect(page.locator("#mask")).to_have_attribute("aria-invalid", "true")
    assert httpx.get(f"{tiny.url}/v1/jobs").json()["data"] == before


def test_cancel_stops_a_running_job(slow: Live, page: Page) -> None:
    """Cancel during the steps ends the job cancelled, on the page and in the API."""
    page.goto(slow.url)
    generate_on_page(page, "a slow fox")
    expect(page.locator("#job-status")).to_have_text(re.compile(r"^Step \d+ of 100"))
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#job-status")).to_have_text("Cancelled.")
    expect(page.get_by_role("button", name="Generate")).to_be_enabled()
    jobs = httpx.get(f"{slow.url}/v1/jobs").json()["data"]
    assert jobs[0]["status"] == "cancelled"


def test_a_failover_is_explained_in_words(failing: Live, page: Page) -> None:
    """The result says why the first provider failed and which one made the image."""
    page.goto(failing.url)
    generate_on_page(page, "a harbour")
    expect(page.locator("#job-status")).to_have_text(re.compile(r"^Done in .* on up"))
    expect(page.locator("#attempts .failover")).to_have_text(
        "down: connection refused by 127.0.0.1:9 → used up"
    )
    expect(page.locator("#attempts")).to_contain_text("start the server")


def test_an_open_breaker_shows_in_the_providers_panel(failing: Live, page: Page) -> None:
    """A provider that refused connections is listed with its breaker open and the error."""
    submit_and_wait(failing, prompt="a harbour")
    page.goto(failing.url)
    down = page.locator(".provider", has_text="down")
    expect(down.locator(".badge")).to_have_text("breaker open")
    expect(down).to_contain_text("connection refused")
    expect(page.locator(".provider", has_text="up").locator(".badge")).to_have_text("ready")
    expect(page.locator("#summary")).to_have_text("1 of 2 providers ready")


def test_an_api_error_shows_next_to_its_field(slow: Live, page: Page) -> None:
    """A width the API refuses is reported under the width field, which is marked invalid."""
    page.goto(slow.url)
    generate_on_page(page, "a fox", width="100")
    expect(page.locator("#err-width")).to_contain_text("multiple of 8")
    expect(page.locator("#width")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#err-prompt")).to_be_empty()


def test_the_form_limits_are_image_requests(slow: Live, page: Page) -> None:
    """The inputs' min and max are ImageRequest's limits, filled in by the server."""
    page.goto(slow.url)
    assert page.get_attribute("#width", "min") == str(limits.MIN_SIDE)
    assert page.get_attribute("#height", "max") == str(limits.MAX_SIDE)
    assert page.get_attribute("#steps", "max") == str(limits.MAX_STEPS)
    assert page.get_attribute("#seed", "max") == str(limits.MAX_SEED)
    assert page.get_attribute("#n", "max") == str(limits.MAX_N)
    assert "{{" not in page.content()


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch) -> Iterator[Live]:
    """A server with API keys on and one fast fake provider."""
    monkeypatch.setenv("IMAGEGATE_API_KEYS", KEY)
    with live(fake_settings(["fast"]), {"fast": Fake("fast")}) as server:
        yield server


def test_with_auth_on_the_page_asks_for_the_key(keyed: Live, page: Page) -> None:
    """Without a key the page shows only the key form, and a wrong key is refused there."""
    page.goto(keyed.url)
    expect(page.get_by_role("heading", name="This server needs an API key")).to_be_visible()
    expect(page.locator("#app")).to_be_hidden()
    page.get_by_label("API key", exact=True).fill("sk-wrong")
    page.get_by_role("button", name="Use this key").click()
    expect(page.locator("#err-key")).to_have_text("The server refused this key.")
    expect(page.locator("#app")).to_be_hidden()


def test_with_the_key_the_page_generates_and_remembers_it(keyed: Live, page: Page) -> None:
    """With the right key the page generates and shows the image; a reload keeps the key."""
    page.goto(keyed.url)
    page.get_by_label("API key", exact=True).fill(KEY)
    page.get_by_role("button", name="Use this key").click()
    generate_on_page(page, "a locked door", seed="9")
    expect(page.locator("#job-status")).to_have_text(re.compile(r"^Done in .* on fast"))
    expect(page.locator("#images img")).to_have_attribute("src", re.compile(r"^blob:"))
    page.reload()
    expect(page.locator("#app")).to_be_visible()
    expect(page.locator("#key-panel")).to_be_hidden()
    expect(page.locator("#history-grid img").first).to_have_attribute("src", re.compile("blob:"))


def test_a_phone_sized_screen_has_no_horizontal_scroll(slow: Live, browser: Browser) -> None:
    """At 390x844 nothing is wider than the screen and the controls can be tapped."""
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
    )
    context.set_default_timeout(WAIT_MS)
    try:
        page = context.new_page()
        page.goto(slow.url)
        page.locator("#prompt").fill("a pocket-sized fox")
        page.get_by_role("button", name="Generate").tap()
        expect(page.locator("#job-status")).to_have_text(re.compile(r"^Step \d+ of 100"))
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        page.locator("#settings > summary").tap()
        for name in ("Prompt", "Width", "Seed", "Provider"):
            box = page.get_by_label(name, exact=True).bounding_box()
            assert box is not None
            assert box["x"] >= 0
            assert box["x"] + box["width"] <= 390
            assert box["height"] >= 36
        page.get_by_role("button", name="Cancel").tap()
        expect(page.locator("#job-status")).to_have_text("Cancelled.")
    finally:
        context.close()


def test_no_request_leaves_the_servers_host(tiny: Live, page: Page) -> None:
    """Loading, generating and browsing the history fetch only from 127.0.0.1."""
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    page.goto(tiny.url)
    generate_on_page(page, "a quiet street")
    expect(page.locator("#job-status")).to_have_text(re.compile(r"^Done in"))
    expect(page.locator("#history-grid img").first).to_have_attribute("src", re.compile("blob:"))
    assert urls
    for url in urls:
        if url.startswith("data:"):
            continue
        assert urlsplit(url.removeprefix("blob:")).hostname == "127.0.0.1", url


def test_the_page_ships_in_the_package() -> None:
    """index.html, app.js and style.css are package files, next to web.py."""
    assert {path.name for path in web.UI_DIR.iterdir()} >= {"index.html", "app.js", "style.css"}


@pytest.fixture
def routed() -> Iterator[Live]:
    """A server whose default route is 'one' and whose named route 'other' is 'two'."""
    settings = fake_settings(["one", "two"]).model_copy(
        update={
            "gateway": fake_settings(["one"]).gateway,
            "routes": {"other": RouteSettings(route=["two"])},
        }
    )
    with live(settings, {"one": Fake("one"), "two": Fake("two")}) as server:
        yield server


def test_the_route_picker_runs_a_named_route(routed: Live, page: Page) -> None:
    """The Route picker lists the named routes; picking 'other' runs on its provider."""
    page.goto(routed.url)
    page.locator("#settings").evaluate("details => { details.open = true; }")
    expect(page.locator("#route option[value='other']")).to_have_count(1)
    page.locator("#route").select_option("other")
    generate_on_page(page, "a fox")
    expect(page.locator("#job-status")).to_have_text(re.compile(r"^Done in .* on two"))
