"""The web page, end to end in a real browser: headless Chromium against a real uvicorn server.

The server is the real app (``service.app.create_app``) serving a real eGeMAPS bundle on a free port
of 127.0.0.1; Chromium (Debian's ``/usr/bin/chromium``, driven by Playwright) records from a fake
microphone that plays a generated clip. Each state is saved as a screenshot into ``SER_SCREENSHOT_DIR``
(default ``test-screenshots/`` at the repository root) for a person to look at.

The long-recording and live tests (also marker ``realdata``; skipped where ``SER_TEST_DATA`` is unset)
serve a bundle fitted on real speech: a 90 s recording of RAVDESS sentences goes through POST /v1/jobs to
the page's timeline, and in live mode the fake microphone speaks 18.5 s of it over the WebSocket
/v1/stream, where every window must be drawn within 2 s of the audio it ends with.

The browser tests (marker ``browser``) need ``scripts/install-browser.sh`` (Debian's chromium) and the
``playwright`` package (dev extra), and skip with the reason where either is missing; the first two
tests check how the page is served and run everywhere.
Run: ``pytest tests/service/test_web_browser.py`` (or ``-m browser`` for the browser tests alone).
"""

from __future__ import annotations

import base64
import csv
import json
import math
import os
import re
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient
from service_support import resample_linear, serve, wait_until
from support import synthetic_clip, wav_bytes

from service.web import STATIC_DIR
from shared.constants import EMOTIONS

try:
    from playwright import sync_api
except ImportError:  # the browser fixture skips, saying so
    sync_api = None  # type: ignore[assignment]

CHROMIUM = Path("/usr/bin/chromium")
REPO_ROOT = Path(__file__).resolve().parents[2]
#: Not audio at all: the service must refuse it, and the page must show the service's words.
NOT_AUDIO = b"These are meeting notes, saved with the wrong extension.\n" * 4
API_KEY = "browser-test-key"


# --- how the page is served (no browser needed) ---------------------------------------------------


class _AssetLinks(HTMLParser):
    """The src/href of every element that makes the browser load something (not links to follow)."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "a":
            self.links += [value for name, value in attrs if name in ("src", "href") and value]


def test_the_page_is_served_at_root_and_at_emotion(egemaps_client: TestClient) -> None:
    root, emotion = egemaps_client.get("/"), egemaps_client.get("/emotion")
    for page in (root, emotion):
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page.text
    assert root.text == emotion.text == (STATIC_DIR / "index.html").read_text()

    paths = egemaps_client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and "/emotion" not in paths
    assert "/v1/predict" in paths  # the page's API is documented; the page is not


def test_the_page_loads_only_its_own_files(egemaps_client: TestClient) -> None:
    parser = _AssetLinks()
    parser.feed(egemaps_client.get("/").text)
    assets = [link for link in parser.links if not link.startswith("data:")]
    assert sorted(assets) == ["static/app.js", "static/style.css", "static/timeline.js"]
    # The live mode's AudioWorklet module is loaded by app.js, not by the page.
    assert 'addModule("static/live-capture.js")' in (STATIC_DIR / "app.js").read_text()
    types = {
        "static/app.js": "javascript",
        "static/style.css": "text/css",
        "static/timeline.js": "javascript",
        "static/live-capture.js": "javascript",
    }
    for asset in [*assets, "static/live-capture.js"]:
        reply = egemaps_client.get(f"/{asset}")
        assert reply.status_code == 200 and types[asset] in reply.headers["content-type"]
        # No URL to anywhere else: no CDN, no web font, no absolute API address.
        assert not re.search(r"https?://|@import|url\(", reply.text), asset


# --- the server and the browser ------------------------------------------------------------------


@pytest.fixture(scope="module")
def screenshot_dir() -> Path:
    folder = Path(os.environ.get("SER_SCREENSHOT_DIR") or REPO_ROOT / "test-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def fake_mic_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the fake microphone plays (in a loop): a 3 s "happy" clip, 16-bit PCM at 48 kHz."""
    path = tmp_path_factory.mktemp("fake-mic") / "happy-48k.wav"
    sf.write(path, synthetic_clip("happy", 3.0, seed=3, sample_rate=48_000), 48_000, subtype="PCM_16")
    return path


def _serve(bundle: Path, **overrides: Any) -> Iterator[str]:
    """Run the real app on 127.0.0.1 until its model is ready; yields its base URL."""
    from service.app import create_app
    from service.settings import ServiceSettings

    settings = ServiceSettings(bundle=bundle, device="cpu", hf_offline=True, worker_threads=1, **overrides)
    with serve(create_app(settings), graceful_timeout=5) as server:
        wait_until(lambda: httpx.get(f"{server.url}/ready", timeout=5).status_code == 200, timeout=120)
        yield server.url


@pytest.fixture(scope="module")
def server(egemaps_bundle: Path) -> Iterator[str]:
    """Base URL of the real service serving the eGeMAPS bundle with default settings."""
    yield from _serve(egemaps_bundle)


@pytest.fixture(scope="module")
def timeline_server(timeline_bundle: Path) -> Iterator[str]:
    """The real service serving an eGeMAPS bundle fitted on real speech (RAVDESS actors 1-4)."""
    yield from _serve(timeline_bundle)


@pytest.fixture(scope="module")
def short_stream_server(timeline_bundle: Path) -> Iterator[str]:
    """The real service, its live streams limited to 7 s of audio (then it ends them with a reason)."""
    yield from _serve(timeline_bundle, stream_max_seconds=7.0)


@pytest.fixture(scope="module")
def locked_server(egemaps_bundle: Path) -> Iterator[str]:
    """The real service with an API key required and utterances limited to 2 s."""
    yield from _serve(egemaps_bundle, api_keys=[API_KEY], max_seconds=2.0)


@pytest.fixture(scope="module")
def live_mic_wav(
    ravdess_recording: tuple[Path, list, list], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """What the fake microphone plays in live mode: the first 18.5 s of the RAVDESS recording (six clips:
    happy, disgust, fear, happy, disgust, fear, with pauses), 16-bit PCM at 48 kHz, in a temporary folder."""
    wave, rate = sf.read(ravdess_recording[0], dtype="float32")
    assert rate == 16_000
    path = tmp_path_factory.mktemp("live-mic") / "ravdess-18s-48k.wav"
    sf.write(path, resample_linear(wave[: int(18.5 * rate)], 48_000), 48_000, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def playwright_driver() -> Iterator[Any]:
    """One Playwright driver for the module (its sync API allows one at a time): both browsers use it."""
    if not CHROMIUM.exists():
        pytest.skip(f"Debian's Chromium is not installed at {CHROMIUM}: run scripts/install-browser.sh")
    if sync_api is None:
        pytest.skip("the playwright package is not installed: pip install -e '.[dev]'")
    with sync_api.sync_playwright() as playwright:
        yield playwright


def _launch_chromium(playwright: Any, mic_wav: Path) -> Iterator[Any]:
    """Headless Chromium whose fake microphone plays ``mic_wav`` in a loop."""
    browser = playwright.chromium.launch(
        executable_path=str(CHROMIUM),
        headless=True,
        chromium_sandbox=False,
        args=[
            "--headless",
            "--no-sandbox",
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-audio-capture={mic_wav}",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ],
    )
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture(scope="module")
def browser(playwright_driver: Any, fake_mic_wav: Path) -> Iterator[Any]:
    yield from _launch_chromium(playwright_driver, fake_mic_wav)


@pytest.fixture(scope="module")
def live_browser(playwright_driver: Any, live_mic_wav: Path) -> Iterator[Any]:
    """Chromium whose microphone speaks RAVDESS sentences of several emotions."""
    yield from _launch_chromium(playwright_driver, live_mic_wav)


#: A phone's browser: 390 x 844 CSS pixels at twice the density, touch.
PHONE: dict[str, Any] = {
    "viewport": {"width": 390, "height": 844},
    "device_scale_factor": 2,
    "is_mobile": True,
    "has_touch": True,
}


class PageUnderTest:
    """A fresh browser context on the page, recording page errors and requests to /v1/predict."""

    def __init__(self, browser: Any, base_url: str, **context_options: Any) -> None:
        self.context = browser.new_context(base_url=base_url, **context_options)
        self.context.grant_permissions(["microphone"], origin=base_url)
        self.page = self.context.new_page()
        self.page.set_default_timeout(20_000)
        self.page_errors: list[str] = []
        self.predict_requests: list[Any] = []
        self.page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        self.page.on("console", self._on_console)
        self.page.on(
            "request",
            lambda request: self.predict_requests.append(request) if "/v1/predict" in request.url else None,
        )

    def _on_console(self, message: Any) -> None:
        # A 4xx reply is logged by Chromium as "Failed to load resource"; the tests ask for some on
        # purpose. Anything else logged as an error (a CSP refusal, a failed script) is a fault.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.page_errors.append(message.text)

    def open(self, path: str = "/", *, model_line: str = "Model: synthetic, version 1") -> Any:
        response = self.page.goto(path)
        assert response is not None and response.status == 200
        # The page asks /v1/info for the model; once named, the limits are known too.
        sync_api.expect(self.page.locator("#model-line")).to_have_text(model_line)
        return self.page

    def close(self) -> None:
        self.context.close()
        assert not self.page_errors, f"errors on the page: {self.page_errors}"


@pytest.fixture
def ui(browser: Any, server: str) -> Iterator[PageUnderTest]:
    under_test = PageUnderTest(browser, server, viewport={"width": 1100, "height": 900})
    yield under_test
    under_test.close()


def model_line_of(server: str) -> str:
    """The model line the page shows for ``server``'s model."""
    model = httpx.get(f"{server}/v1/info", timeout=10).json()["model"]
    return f"Model: {model['name']}, version {model['version']}"


def js_fixed(value: float, digits: int) -> str:
    """JavaScript's ``value.toFixed(digits)``: the exact binary value rounded, ties away from zero."""
    return str(Decimal(value).quantize(Decimal(1).scaleb(-digits), ROUND_HALF_UP))


def clock(t: float) -> str:
    """The page's ``m:ss.s`` for ``t`` seconds (timeline.js rounds ``t * 10`` once, half up)."""
    minutes, tenths = divmod(math.floor(t * 10 + 0.5), 600)
    return f"{minutes}:{tenths // 10:02d}.{tenths % 10}"


def painted_pixels(page: Any, canvas_id: str) -> int:
    """How many pixels of the canvas ``canvas_id`` have been painted."""
    return page.evaluate(
        """(id) => {
            const canvas = document.getElementById(id);
            const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
            let painted = 0;
            for (let i = 3; i < data.length; i += 4) if (data[i] > 0) painted++;
            return painted;
        }""",
        canvas_id,
    )


def player_time(page: Any) -> float:
    return float(page.evaluate("() => document.getElementById('timeline-player').currentTime"))


def api_predict(server: str, name: str, data: bytes) -> httpx.Response:
    """The service's own answer for ``data``, asked directly (what the page must show)."""
    return httpx.post(f"{server}/v1/predict", files={"file": (name, data)}, timeout=30)


def shown_bars(page: Any) -> dict[str, float]:
    """The emotion -> percentage pairs the page shows, in page order."""
    rows = page.locator("#bars .bar-row")
    names = rows.locator(".bar-name").all_inner_texts()
    values = rows.locator(".bar-value").all_inner_texts()
    return {
        name.strip().lower(): float(value.strip().rstrip("%"))
        for name, value in zip(names, values, strict=True)
    }


def drawn_pixels(page: Any) -> int:
    """How many pixels of the waveform canvas have been painted."""
    return page.evaluate(
        """() => {
            const canvas = document.getElementById("waveform");
            const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
            let painted = 0;
            for (let i = 3; i < data.length; i += 4) if (data[i] > 0) painted++;
            return painted;
        }"""
    )


#: Text that must stand out from its background by WCAG AA's 4.5:1.
TEXT_SELECTORS = (
    "h1", "h2", ".lede", "#model-line", ".hint", "#timer", ".timer-max", ".dropzone-text", "label.button",
    ".button-record", "#send-button:enabled", "summary", ".clip-name", ".bar-name", ".bar-value",
    "#result-label", "#result-confidence", "figcaption", ".meta dt", ".meta dd", "#error",
    "#job-text", "#job-percent", ".legend-name", ".swatch", ".band-tag", ".tick", ".segment-time",
    ".segment-label", ".segment-confidence", "#live-status", "#live-label", ".live-figures", "#live-error",
    ".window-list li", "#timeline-notes p",
)  # fmt: skip


def contrast_failures(page: Any) -> list[str]:
    """Visible text under 4.5:1 against its background, and bars under 3:1 against their track."""
    return page.evaluate(
        """(selectors) => {
            const rgba = (text) => {
                const p = text.match(/rgba?\\(([^)]+)\\)/)[1].split(/[\\s,\\/]+/).filter(Boolean).map(Number);
                return { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 };
            };
            const luminance = ({ r, g, b }) => {
                const lin = (v) => ((v /= 255) <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4);
                return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
            };
            const ratio = (a, b) => {
                const [hi, lo] = [luminance(a), luminance(b)].sort((x, y) => y - x);
                return (hi + 0.05) / (lo + 0.05);
            };
            const backdrop = (node) => {
                for (let n = node; n; n = n.parentElement) {
                    const c = rgba(getComputedStyle(n).backgroundColor);
                    if (c.a > 0.99) return c;
                }
                return { r: 255, g: 255, b: 255, a: 1 };
            };
            const failures = [];
            for (const selector of selectors) {
                for (const node of document.querySelectorAll(selector)) {
                    if (!node.getClientRects().length || !node.textContent.trim()) continue;
                    const r = ratio(rgba(getComputedStyle(node).color), backdrop(node));
                    if (r < 4.5) failures.push(`${selector} "${node.textContent.trim().slice(0, 30)}": ${r.toFixed(2)}`);
                }
            }
            for (const fill of document.querySelectorAll(".bar-fill")) {
                const r = ratio(rgba(getComputedStyle(fill).backgroundColor), backdrop(fill.parentElement));
                if (r < 3) failures.push(`bar ${fill.dataset.emotion}: ${r.toFixed(2)}`);
            }
            return failures;
        }""",
        list(TEXT_SELECTORS),
    )


def assert_result_matches(page: Any, expected: dict[str, Any]) -> None:
    """The result on the page is the service's answer ``expected``: label, six bars, model."""
    sync_api.expect(page.locator("#result-section")).to_be_visible()
    sync_api.expect(page.locator("#result-label")).to_have_text(expected["label"])
    bars = shown_bars(page)
    assert list(bars) == list(EMOTIONS)
    for emotion, probability in expected["probabilities"].items():
        assert bars[emotion] == pytest.approx(100 * probability, abs=0.051), emotion
    assert sum(bars.values()) == pytest.approx(100, abs=0.5)
    sync_api.expect(page.locator("#result-confidence")).to_have_text(
        f"{100 * expected['confidence']:.1f}% confident"
    )
    sync_api.expect(page.locator("#result-model")).to_have_text(
        f"{expected['model']['name']}, version {expected['model']['version']}"
    )
    sync_api.expect(page.locator("#result-time")).to_contain_text("ms in the service")
    note = page.locator("#result-uncertain")
    if expected["uncertain"]:
        sync_api.expect(note).to_be_visible()
        sync_api.expect(note).to_contain_text("Uncertain:")
    else:
        sync_api.expect(note).to_be_hidden()


# --- tests ---------------------------------------------------------------------------------------


@pytest.mark.browser
def test_upload_a_file_shows_the_label_six_bars_and_the_waveform(
    ui: PageUnderTest, server: str, screenshot_dir: Path
) -> None:
    page = ui.open("/")
    page.screenshot(path=screenshot_dir / "01-start.png", full_page=True)
    audio = wav_bytes(synthetic_clip("happy", 2.0, seed=11))
    expected = api_predict(server, "happy.wav", audio).json()

    page.set_input_files(
        "#file-input", files=[{"name": "happy.wav", "mimeType": "audio/wav", "buffer": audio}]
    )
    sync_api.expect(page.locator("#clip-duration")).to_have_text("(2.00 s)")
    send = page.get_by_role("button", name="Analyse emotion")
    sync_api.expect(send).to_be_enabled()

    # Hold the request in the browser to see the page while it waits, then let it through.
    held: list[Any] = []
    page.route("**/v1/predict", lambda route: held.append(route))
    send.click()
    sync_api.expect(page.locator("#progress")).to_be_visible()
    sync_api.expect(page.locator("#progress-text")).to_contain_text("Analysing")
    sync_api.expect(send).to_be_disabled()
    page.wait_for_timeout(600)  # the elapsed time is shown as it grows
    sync_api.expect(page.locator("#progress-text")).to_have_text(re.compile(r"Analysing… \d+\.\d s"))
    page.screenshot(path=screenshot_dir / "02-waiting.png", full_page=True)
    assert len(held) == 1
    held[0].continue_()

    assert_result_matches(page, expected)
    sync_api.expect(page.locator("#progress")).to_be_hidden()
    sync_api.expect(page.locator("#result-for")).to_have_text("for happy.wav")
    sync_api.expect(page.locator("#result-duration")).to_have_text("2.00 s")
    sync_api.expect(page.locator("#waveform-caption")).to_contain_text("2.00 s")
    assert drawn_pixels(page) > 1000
    announced = f"Result: {expected['label']}, {100 * expected['confidence']:.1f}% confident."
    sync_api.expect(page.locator("#announce")).to_have_text(
        re.compile("^" + re.escape(announced) + (r" Uncertain: .+$" if expected["uncertain"] else "$"))
    )
    assert len(ui.predict_requests) == 1
    page.screenshot(path=screenshot_dir / "03-upload-result.png", full_page=True)


def fulfil_with(body: dict[str, Any]) -> Any:
    """A route handler answering with ``body`` as JSON."""
    return lambda route: route.fulfill(json=body)


@pytest.mark.browser
def test_an_uncertain_prediction_says_why_and_a_confident_one_says_nothing(
    ui: PageUnderTest, server: str
) -> None:
    page = ui.open("/")
    audio = wav_bytes(synthetic_clip("sad", 1.5, seed=5))
    answer = api_predict(server, "sad.wav", audio).json()
    for flagged, reasons, text in (
        (True, ["out_of_distribution"], "unlike the model's training data"),
        (True, ["low_confidence"], "no emotion clearly stands out"),
        (False, [], None),
    ):
        body = {**answer, "uncertain": flagged, "uncertain_reasons": reasons}
        page.unroute("**/v1/predict")
        page.route("**/v1/predict", fulfil_with(body))
        page.set_input_files(
            "#file-input", files=[{"name": "sad.wav", "mimeType": "audio/wav", "buffer": audio}]
        )
        page.get_by_role("button", name="Analyse emotion").click()
        sync_api.expect(page.locator("#result-label")).to_have_text(answer["label"])
        note = page.locator("#result-uncertain")
        if text is None:
            sync_api.expect(note).to_be_hidden()
        else:
            sync_api.expect(note).to_contain_text(text)
            sync_api.expect(page.locator("#announce")).to_contain_text(text)


@pytest.mark.browser
def test_record_from_the_microphone_and_see_a_result(ui: PageUnderTest, screenshot_dir: Path) -> None:
    page = ui.open("/emotion")
    page.get_by_role("button", name="Record").click()
    sync_api.expect(page.get_by_role("button", name="Stop")).to_be_visible()
    page.wait_for_timeout(2_200)
    elapsed = float(page.locator("#timer").inner_text().removesuffix(" s"))
    assert 1.5 <= elapsed <= 3.5
    page.screenshot(path=screenshot_dir / "04-recording.png", full_page=True)
    page.get_by_role("button", name="Stop").click()

    sync_api.expect(page.locator("#clip-name")).to_have_text("recording.webm")
    send = page.get_by_role("button", name="Analyse emotion")
    sync_api.expect(send).to_be_enabled()
    with page.expect_response(lambda r: r.url.endswith("/v1/predict")) as answer:
        send.click()
    response = answer.value
    assert response.status == 200, response.text()
    assert response.request.headers["content-type"].startswith("multipart/form-data")
    result = response.json()
    assert 1.5 <= result["duration_s"] <= 3.5

    assert_result_matches(page, result)
    sync_api.expect(page.locator("#result-for")).to_have_text("for recording.webm")
    assert drawn_pixels(page) > 1000
    page.screenshot(path=screenshot_dir / "05-recording-result.png", full_page=True)


@pytest.mark.browser
def test_a_too_short_recording_shows_why_and_is_not_sent(ui: PageUnderTest, screenshot_dir: Path) -> None:
    page = ui.open("/")
    page.get_by_role("button", name="Record").click()
    stop = page.get_by_role("button", name="Stop")
    sync_api.expect(stop).to_be_visible()
    page.wait_for_timeout(150)
    stop.click()

    error = page.locator("#error[role=alert]")
    sync_api.expect(error).to_be_visible()
    sync_api.expect(error).to_contain_text("Too short: the recording is")
    sync_api.expect(error).to_contain_text("the service needs at least 0.5 s of speech")
    sync_api.expect(page.get_by_role("button", name="Analyse emotion")).to_be_disabled()
    page.screenshot(path=screenshot_dir / "06-too-short.png", full_page=True)
    assert ui.predict_requests == []

    # The page stays usable: a good file clears the error and can be sent.
    audio = wav_bytes(synthetic_clip("sad", 1.5, seed=5))
    page.set_input_files("#file-input", files=[{"name": "sad.wav", "mimeType": "audio/wav", "buffer": audio}])
    sync_api.expect(error).to_be_hidden()
    page.get_by_role("button", name="Analyse emotion").click()
    sync_api.expect(page.locator("#bars .bar-row")).to_have_count(6)


@pytest.mark.browser
def test_an_error_from_the_service_is_shown_in_its_words(
    ui: PageUnderTest, server: str, screenshot_dir: Path
) -> None:
    refusal = api_predict(server, "notes.wav", NOT_AUDIO)
    assert refusal.status_code == 415
    page = ui.open("/")

    # Dropped on the drop zone; the browser cannot decode it, so only the service can judge it.
    transfer = page.evaluate_handle(
        """(b64) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "notes.wav", { type: "audio/wav" }));
            return transfer;
        }""",
        base64.b64encode(NOT_AUDIO).decode(),
    )
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})
    sync_api.expect(page.locator("#clip-name")).to_have_text("notes.wav")
    send = page.get_by_role("button", name="Analyse emotion")
    sync_api.expect(send).to_be_enabled()
    send.click()

    # The service's own words (the page starts them with a capital and ends them with a full stop).
    error = page.locator("#error[role=alert]")
    sync_api.expect(error).to_have_text(re.compile(re.escape(refusal.json()["error"]), re.IGNORECASE))
    sync_api.expect(send).to_be_enabled()
    sync_api.expect(page.locator("#progress")).to_be_hidden()
    sync_api.expect(page.locator("#result-section")).to_be_hidden()
    assert contrast_failures(page) == []
    page.screenshot(path=screenshot_dir / "07-service-error.png", full_page=True)


@pytest.mark.browser
def test_an_api_key_can_be_given_and_a_long_recording_stops_at_the_limit(
    browser: Any, locked_server: str, screenshot_dir: Path
) -> None:
    ui = PageUnderTest(browser, locked_server, viewport={"width": 1100, "height": 900})
    try:
        page = ui.open("/", model_line="The service needs an API key: enter it under “API key” below.")
        sync_api.expect(page.locator("#api-key-details")).to_have_attribute("open", "")
        page.get_by_label("API key", exact=True).fill(API_KEY)
        page.get_by_label("API key", exact=True).press("Tab")  # "change" asks /v1/info again, with the key
        sync_api.expect(page.locator("#model-line")).to_have_text("Model: synthetic, version 1")
        sync_api.expect(page.locator("#limits-hint")).to_contain_text("between 0.5 s and 2 s")

        # Keep talking past the 2 s limit: the recording stops by itself, inside the limit.
        page.get_by_role("button", name="Record").click()
        sync_api.expect(page.get_by_role("button", name="Stop")).to_be_visible()
        sync_api.expect(page.get_by_role("button", name="Record")).to_be_visible(timeout=5_000)
        sync_api.expect(page.locator("#record-status")).to_contain_text("Stopped at the 2 s limit.")
        with page.expect_response(lambda r: r.url.endswith("/v1/predict")) as answer:
            page.get_by_role("button", name="Analyse emotion").click()
        assert answer.value.request.headers.get("x-api-key") == API_KEY
        assert answer.value.status == 200, answer.value.text()
        assert 1.0 <= answer.value.json()["duration_s"] <= 2.0
        sync_api.expect(page.locator("#bars .bar-row")).to_have_count(6)
        page.screenshot(path=screenshot_dir / "08-api-key-auto-stop.png", full_page=True)

        # The key lasts for the tab (sessionStorage): a reload still has it.
        page.reload()
        sync_api.expect(page.locator("#model-line")).to_have_text("Model: synthetic, version 1")
    finally:
        ui.close()


@pytest.mark.browser
def test_keyboard_alone_reaches_every_control(ui: PageUnderTest, screenshot_dir: Path) -> None:
    page = ui.open("/")
    audio = wav_bytes(synthetic_clip("angry", 1.5, seed=2))
    page.set_input_files(
        "#file-input", files=[{"name": "angry.wav", "mimeType": "audio/wav", "buffer": audio}]
    )
    sync_api.expect(page.get_by_role("button", name="Analyse emotion")).to_be_enabled()

    page.locator("body").focus()
    reached = []
    for _ in range(20):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("() => document.activeElement.id || document.activeElement.tagName"))
        if reached[-1] == "file-input":
            page.screenshot(path=screenshot_dir / "12-keyboard-focus.png")
        if reached[-1] == "send-button":
            break
    assert reached.index("record-button") < reached.index("file-input") < reached.index("send-button")
    assert "SUMMARY" in reached  # the API key field's disclosure
    page.keyboard.press("Enter")
    sync_api.expect(page.locator("#bars .bar-row")).to_have_count(6)


@pytest.mark.browser
def test_the_page_fits_a_phone(browser: Any, server: str, screenshot_dir: Path) -> None:
    phone = PageUnderTest(browser, server, **PHONE)
    try:
        page = phone.open("/")
        page.screenshot(path=screenshot_dir / "09-phone-start.png", full_page=True)
        audio = wav_bytes(synthetic_clip("fear", 2.5, seed=4))
        page.set_input_files(
            "#file-input", files=[{"name": "fear.wav", "mimeType": "audio/wav", "buffer": audio}]
        )
        page.get_by_role("button", name="Analyse emotion").click()
        sync_api.expect(page.locator("#bars .bar-row")).to_have_count(6)
        assert drawn_pixels(page) > 1000

        # Nothing sticks out sideways, and the result's controls are not squeezed off screen.
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
        for selector in ("#record-button", "#send-button", "#bars", "#waveform"):
            box = page.locator(selector).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, selector
        assert contrast_failures(page) == []
        page.screenshot(path=screenshot_dir / "10-phone-result.png", full_page=True)

        page.emulate_media(color_scheme="dark")
        assert contrast_failures(page) == []
        assert drawn_pixels(page) > 1000
        page.screenshot(path=screenshot_dir / "11-phone-result-dark.png", full_page=True)
    finally:
        phone.close()


def test_the_api_docs_need_no_internet(egemaps_client: TestClient) -> None:
    html = egemaps_client.get("/docs").text
    assert "/docs-assets/swagger-ui-bundle.js" in html
    assert not re.search(r"https?://(?!127\.0\.0\.1)", html.replace("https://swagger.io", ""))
    assert egemaps_client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    assert "/docs-assets/redoc.standalone.js" in egemaps_client.get("/redoc").text


@pytest.mark.browser
def test_the_api_docs_render_every_endpoint(browser: Any, server: str, screenshot_dir: Path) -> None:
    page = browser.new_page(viewport={"width": 1100, "height": 1400})
    try:
        page.goto(f"{server}/docs")
        page.wait_for_selector("[data-path]", timeout=15_000)
        paths = {el.get_attribute("data-path") or "" for el in page.locator("[data-path]").all()}
        page.screenshot(path=str(screenshot_dir / "13-api-docs.png"), full_page=True)
    finally:
        page.close()
    for path in (
        "/v1/predict",
        "/v1/predict/batch",
        "/health",
        "/ready",
        "/v1/info",
        "/metrics",
        "/emotion_predict",
    ):
        assert path in paths, (path, paths)


@pytest.mark.browser
def test_the_page_says_when_the_demo_model_is_served(ui: PageUnderTest, server: str) -> None:
    info = httpx.get(f"{server}/v1/info", timeout=30).json()
    assert info["demo"] is False and info["notice"] is None
    ui.page.route(
        "**/v1/info", fulfil_with({**info, "demo": True, "notice": "the built-in demo model is in use"})
    )
    page = ui.open("/")
    sync_api.expect(page.locator("#demo-note")).to_be_visible()
    sync_api.expect(page.locator("#demo-note")).to_have_text("Demo model: the built-in demo model is in use.")
    ui.page.unroute("**/v1/info")
    page = ui.open("/")
    sync_api.expect(page.locator("#demo-note")).to_be_hidden()


# --- long recordings: a job, then the timeline ----------------------------------------------------


@pytest.mark.browser
@pytest.mark.realdata
def test_a_long_recording_gets_a_timeline_that_seeks_the_player(
    browser: Any, timeline_server: str, ravdess_recording: tuple[Path, list, list], screenshot_dir: Path
) -> None:
    flac = ravdess_recording[0].read_bytes()
    ui = PageUnderTest(browser, timeline_server, viewport={"width": 1100, "height": 900})
    try:
        page = ui.open("/", model_line=model_line_of(timeline_server))
        page.set_input_files(
            "#file-input", files=[{"name": "actors-21-24.flac", "mimeType": "audio/flac", "buffer": flac}]
        )
        sync_api.expect(page.locator("#clip-duration")).to_have_text(re.compile(r"^\(89\.\d\d s\)$"))
        sync_api.expect(page.locator("#clip-note")).to_contain_text("the service will make a timeline of it")

        # The job takes seconds here; the first poll is answered "running, 42%" and the second held, to
        # see the progress as a long recording shows it.
        polls: list[Any] = []

        def on_poll(route: Any) -> None:
            polls.append(route)
            if len(polls) == 1:
                body = route.fetch().json()
                route.fulfill(
                    json={
                        **body,
                        "state": "running",
                        "progress": 0.42,
                        "audio_seconds_done": 37.7,
                        "result": None,
                    }
                )

        page.route("**/v1/jobs/*", on_poll)
        with page.expect_response(
            lambda r: r.url.endswith("/v1/jobs") and r.request.method == "POST"
        ) as made:
            page.get_by_role("button", name="Analyse emotion").click()
        assert made.value.status == 202, made.value.text()
        job_id = made.value.json()["id"]
        sync_api.expect(page.locator("#job-percent")).to_have_text("42%")
        sync_api.expect(page.get_by_role("progressbar")).to_have_attribute("value", "42")
        sync_api.expect(page.locator("#job-text")).to_have_text(
            "Analysing: 37.7 s of 1 min 30 s of audio done."
        )
        sync_api.expect(page.get_by_role("button", name="Cancel the analysis")).to_be_visible()
        sync_api.expect(page.get_by_role("button", name="Analyse emotion")).to_be_disabled()
        assert contrast_failures(page) == []
        page.screenshot(path=screenshot_dir / "14-timeline-progress.png", full_page=True)
        while len(polls) < 2:
            page.wait_for_timeout(50)
        polls[1].continue_()
        page.unroute("**/v1/jobs/*")

        sync_api.expect(page.locator("#timeline-section")).to_be_visible(timeout=60_000)
        sync_api.expect(page.locator("#job-progress")).to_be_hidden()
        job = httpx.get(f"{timeline_server}/v1/jobs/{job_id}", timeout=10).json()
        assert job["state"] == "done"
        result = job["result"]
        segments, windows, summary = result["segments"], result["windows"], result["summary"]
        assert len(segments) >= 10 and len(windows) >= len(segments)  # real speech, many clips
        sync_api.expect(page.locator("#timeline-title")).to_have_text("2. Timeline")
        sync_api.expect(page.locator("#timeline-for")).to_have_text("for actors-21-24.flac")

        # One band per segment, in its emotion's colour and with its name (or the legend's initial).
        bands = page.locator("#timeline-bands .band")
        sync_api.expect(bands).to_have_count(len(segments))
        assert [band.get_attribute("data-emotion") for band in bands.all()] == [s["label"] for s in segments]
        tags = bands.locator(".band-tag").all_inner_texts()
        for tag, segment in zip(tags, segments, strict=True):
            assert tag in (segment["label"], segment["label"][0].upper(), ""), (tag, segment)
        assert sum(bool(tag) for tag in tags) >= 0.8 * len(
            tags
        )  # only a sliver too thin for a letter has none
        colours = page.evaluate(
            """() => [...document.querySelectorAll("#timeline-bands .band-tag")].map(
                (tag) => getComputedStyle(tag).backgroundColor)"""
        )
        assert len(set(colours)) == len({s["label"] for s in segments})
        assert page.locator("#legend .legend-name").all_text_contents() == list(EMOTIONS)
        assert page.locator("#legend .swatch").all_inner_texts() == [e[0].upper() for e in EMOTIONS]
        sync_api.expect(page.locator("#timeline-lines path.prob-line")).to_have_count(6)
        assert painted_pixels(page, "timeline-wave") > 1000

        # The segment list and the summary are the service's.
        items = page.locator("#segments .segment")
        sync_api.expect(items).to_have_count(len(segments))
        for text, segment in zip(items.all_text_contents(), segments, strict=True):
            assert f"{clock(segment['start'])}–{clock(segment['end'])}" in text, (text, segment)
            assert segment["label"] in text and f"{math.floor(100 * segment['confidence'] + 0.5)}%" in text
        sync_api.expect(page.locator("#summary-dominant")).to_have_text(summary["dominant"])
        sync_api.expect(page.locator("#summary-changes")).to_have_text(str(summary["changes"]))
        share = math.floor(100 * summary["speech_s"] / summary["duration_s"] + 0.5)
        sync_api.expect(page.locator("#summary-speech")).to_have_text(
            f"{js_fixed(summary['speech_s'], 1)} s of 1 min 30 s ({share}%)"
        )
        rows = page.locator("#emotion-time .bar-row")
        assert rows.locator(".bar-name").all_text_contents() == list(EMOTIONS)
        assert rows.locator(".bar-value").all_inner_texts() == [
            f"{js_fixed(summary['emotion_seconds'][e], 1)} s" for e in EMOTIONS
        ]
        assert contrast_failures(page) == []
        page.locator("#timeline-section").scroll_into_view_if_needed()
        page.screenshot(path=screenshot_dir / "15-timeline.png", full_page=True)

        # A click on the timeline plays from there; the player's time is the cursor.
        duration = float(page.locator("#timeline").get_attribute("aria-valuemax") or 0)
        assert duration == pytest.approx(summary["duration_s"], abs=0.1)
        box = page.locator("#timeline").bounding_box()
        assert box is not None
        page.mouse.click(box["x"] + 0.5 * box["width"], box["y"] + 40)
        assert player_time(page) == pytest.approx(duration / 2, abs=0.2)
        cursor = page.locator("#timeline-cursor")
        sync_api.expect(cursor).to_be_visible()
        assert cursor.bounding_box()["x"] == pytest.approx(box["x"] + 0.5 * box["width"], abs=3)  # type: ignore[index]

        # A segment's button plays it; so does the keyboard (arrows move, Enter plays).
        items.nth(3).click()
        assert player_time(page) == pytest.approx(segments[3]["start"], abs=0.01)
        page.locator("#timeline").focus()
        for key in ("Home", "ArrowRight", "ArrowRight", "Shift+ArrowRight", "ArrowLeft"):
            page.keyboard.press(key)
        sync_api.expect(page.locator("#timeline")).to_have_attribute("aria-valuenow", "11.0")
        sync_api.expect(page.locator("#timeline-mark")).to_be_visible()
        page.keyboard.press("Enter")
        assert player_time(page) == pytest.approx(11.0, abs=0.01)

        # The downloads: one CSV row per window, and the timeline as the service sent it.
        with page.expect_download() as csv_download:
            page.get_by_role("link", name="Download CSV").click()
        assert csv_download.value.suggested_filename == "actors-21-24-timeline.csv"
        table = list(csv.reader(Path(csv_download.value.path()).read_text().splitlines()))
        assert table[0] == ["start", "end", "label", "confidence", "uncertain", *EMOTIONS]
        assert len(table) == 1 + len(windows)
        for row, window in zip(table[1:], windows, strict=True):
            assert [float(row[0]), float(row[1]), row[2], float(row[3]), row[4]] == [
                window["start"], window["end"], window["label"], window["confidence"], str(window["uncertain"]).lower()
            ]  # fmt: skip
            assert [float(v) for v in row[5:]] == [window["probabilities"][e] for e in EMOTIONS]
        with page.expect_download() as json_download:
            page.get_by_role("link", name="Download JSON").click()
        assert json_download.value.suggested_filename == "actors-21-24-timeline.json"
        assert json.loads(Path(json_download.value.path()).read_text()) == result

        page.emulate_media(color_scheme="dark")
        assert contrast_failures(page) == []
        page.screenshot(path=screenshot_dir / "16-timeline-dark.png", full_page=True)
    finally:
        ui.close()


@pytest.mark.browser
def test_a_long_recording_without_speech_says_so_on_a_phone(
    browser: Any, server: str, screenshot_dir: Path
) -> None:
    phone = PageUnderTest(browser, server, **PHONE)
    try:
        page = phone.open("/")
        hiss = np.random.default_rng(7).normal(0, 0.003, 16_000 * 35).astype(np.float32)
        page.set_input_files(
            "#file-input", files=[{"name": "hiss.wav", "mimeType": "audio/wav", "buffer": wav_bytes(hiss)}]
        )
        sync_api.expect(page.locator("#clip-duration")).to_have_text("(35.00 s)")
        page.get_by_role("button", name="Analyse emotion").click()
        sync_api.expect(page.locator("#timeline-notes")).to_have_text(
            "No speech was found in this recording, so there is no emotion to show."
        )
        sync_api.expect(page.locator("#timeline-bands .band")).to_have_count(0)
        sync_api.expect(page.locator("#segments")).to_have_text("No segments: no speech was labelled.")
        sync_api.expect(page.locator("#summary-dominant")).to_have_text("none (no speech)")
        sync_api.expect(page.locator("#summary-speech")).to_have_text("0.0 s of 35.0 s (0%)")
        sync_api.expect(page.locator("#announce")).to_have_text(
            "The timeline is ready: no speech was found in the recording."
        )
        # The timeline fits the phone: nothing sticks out sideways.
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
        for selector in ("#timeline", "#timeline-player", "#downloads"):
            box = page.locator(selector).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, selector
        assert contrast_failures(page) == []
        page.screenshot(path=screenshot_dir / "17-timeline-no-speech-phone.png", full_page=True)
    finally:
        phone.close()


# --- live mode: the microphone streamed over the WebSocket ----------------------------------------

#: Keeps every stream the page opens, so a test can tell whether the microphone was released.
TRACK_MICROPHONES = """(() => {
    const open = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
    window.__streams = [];
    navigator.mediaDevices.getUserMedia = async (constraints) => {
        const stream = await open(constraints);
        window.__streams.push(stream);
        return stream;
    };
})();"""


def open_microphones(page: Any) -> int:
    """Microphone tracks the page still holds open."""
    return page.evaluate(
        "() => window.__streams.flatMap((s) => s.getTracks()).filter((t) => t.readyState === 'live').length"
    )


def live_seconds(page: Any) -> float:
    return float(page.locator("#live-timer").inner_text().removesuffix(" s"))


def wait_for_live_seconds(page: Any, seconds: float) -> None:
    page.wait_for_function(
        "(s) => parseFloat(document.getElementById('live-timer').textContent) >= s",
        arg=seconds,
        timeout=(seconds + 15) * 1000,
    )


def shown_windows(page: Any) -> list[dict[str, Any]]:
    """The live windows the page drew: start, end, label and lag (the audio sent past their end)."""
    return page.evaluate(
        """() => [...document.querySelectorAll("#window-list li")].map((li) => ({
            start: Number(li.dataset.start), end: Number(li.dataset.end),
            label: li.dataset.label, lag: Number(li.dataset.lagS),
        }))"""
    )


@pytest.mark.browser
def test_live_mode_sends_the_api_key_and_says_when_it_is_wrong(browser: Any, locked_server: str) -> None:
    ui = PageUnderTest(browser, locked_server, viewport={"width": 1100, "height": 900})
    ui.page.add_init_script(TRACK_MICROPHONES)
    starts: list[dict[str, Any]] = []
    ui.page.on(
        "websocket",
        lambda socket: socket.on(
            "framesent",
            lambda payload: (
                starts.append(json.loads(payload))
                if isinstance(payload, str) and '"start"' in payload
                else None
            ),
        ),
    )
    try:
        page = ui.open("/", model_line="The service needs an API key: enter it under “API key” below.")
        key = page.get_by_label("API key", exact=True)
        key.fill("not-the-key")
        page.get_by_role("button", name="Start live").click()
        error = page.locator("#live-error")
        sync_api.expect(error).to_have_text(
            "Live mode could not start: A valid API key is required in the X-API-Key header or the start "
            "message's api_key.",
            timeout=20_000,
        )
        assert starts[-1]["api_key"] == "not-the-key"
        assert open_microphones(page) == 0

        key.fill(API_KEY)
        key.press("Tab")
        sync_api.expect(page.locator("#model-line")).to_have_text("Model: synthetic, version 1")
        page.get_by_role("button", name="Start live").click()
        sync_api.expect(page.locator("#live-status")).to_contain_text("Listening")
        sync_api.expect(error).to_be_empty()
        assert starts[-1]["api_key"] == API_KEY
        wait_for_live_seconds(page, 2)
        page.get_by_role("button", name="Stop live").click()
        sync_api.expect(page.locator("#live-status")).to_have_text(
            "Stopped. The summary of the session is below.", timeout=30_000
        )
        sync_api.expect(error).to_be_empty()
        assert open_microphones(page) == 0
    finally:
        ui.close()


@pytest.mark.browser
@pytest.mark.realdata
def test_live_mode_shows_each_window_within_2_s_and_the_summary_after_stop(
    live_browser: Any, timeline_server: str, screenshot_dir: Path
) -> None:
    ui = PageUnderTest(live_browser, timeline_server, viewport={"width": 1100, "height": 900})
    frames: list[Any] = []
    ui.page.on("websocket", lambda socket: socket.on("framesent", lambda payload: frames.append(payload)))
    ui.page.add_init_script(TRACK_MICROPHONES)
    try:
        page = ui.open("/", model_line=model_line_of(timeline_server))
        with page.expect_websocket() as opened:
            page.get_by_role("button", name="Start live").click()
        assert opened.value.url == timeline_server.replace("http://", "ws://") + "/v1/stream"
        sync_api.expect(page.locator("#live-status")).to_have_text(
            "Listening: speak now. Press “Stop live” when you are done."
        )
        sync_api.expect(page.get_by_role("button", name="Record")).to_be_disabled()
        sync_api.expect(page.locator("#live-label")).to_have_attribute("aria-live", "polite")

        # The windows arrive while the speaker talks, the timeline growing with them.
        wait_for_live_seconds(page, 9)
        assert len(shown_windows(page)) >= 2
        sync_api.expect(page.locator("#timeline-bands .band").first).to_be_visible()
        sync_api.expect(page.locator("#timeline-lines path.prob-line")).to_have_count(6)
        assert page.locator("#live-label").text_content() in EMOTIONS
        assert contrast_failures(page) == []
        page.screenshot(path=screenshot_dir / "18-live.png", full_page=True)
        wait_for_live_seconds(page, 17)
        page.get_by_role("button", name="Stop live").click()
        sync_api.expect(page.locator("#live-status")).to_have_text(
            "Stopped. The summary of the session is below.", timeout=30_000
        )
        sent_seconds = live_seconds(page)

        windows = shown_windows(page)
        assert len(windows) >= 5, windows  # six sentences of about 2 s (one window each) in 17 s
        for window in windows:
            # Each window came at most 2 s after the page had sent the audio it ends with.
            assert -0.01 <= window["lag"] <= 2.0, window
            assert window["label"] in EMOTIONS and window["end"] <= sent_seconds + 0.01
        assert len({w["label"] for w in windows}) >= 2, windows  # happy, disgust and fear were spoken
        assert page.locator("#live-delay").get_attribute("data-lag-s") is not None

        # The protocol as the page spoke it: start, ~100 ms float32 frames at the context's rate, stop.
        start = json.loads(frames[0])
        assert start == {
            "type": "start",
            "format": "f32le",
            "sample_rate": start["sample_rate"],
            "channels": 1,
        }
        audio = [f for f in frames if isinstance(f, bytes)]
        assert {len(f) for f in audio} == {4 * round(start["sample_rate"] * 0.1)}
        assert len(audio) * 0.1 == pytest.approx(sent_seconds, abs=0.15)
        assert json.loads(frames[-1]) == {"type": "stop"}

        # The summary: the service's timeline of the whole session, its bands and segments.
        sync_api.expect(page.locator("#timeline-title")).to_have_text("Live timeline")
        sync_api.expect(page.locator("#timeline-summary")).to_be_visible()
        assert page.locator("#summary-dominant").text_content() in EMOTIONS
        segments = page.locator("#segments .segment")
        assert segments.count() >= 3
        sync_api.expect(page.locator("#timeline-bands .band")).to_have_count(segments.count())
        sync_api.expect(page.locator("#live-error")).to_be_empty()
        assert open_microphones(page) == 0
        sync_api.expect(page.get_by_role("button", name="Start live")).to_be_enabled()
        with page.expect_download() as csv_download:
            page.get_by_role("link", name="Download CSV").click()
        rows = Path(csv_download.value.path()).read_text().splitlines()
        assert rows[0].startswith("start,end,label,confidence,uncertain,") and len(rows) >= 1 + len(
            segments.all()
        )
        assert contrast_failures(page) == []
        page.screenshot(path=screenshot_dir / "19-live-summary.png", full_page=True)
    finally:
        ui.close()


@pytest.mark.browser
@pytest.mark.realdata
def test_live_mode_survives_the_service_ending_the_stream(
    live_browser: Any, short_stream_server: str, screenshot_dir: Path
) -> None:
    ui = PageUnderTest(live_browser, short_stream_server, viewport={"width": 1100, "height": 900})
    ui.page.add_init_script(TRACK_MICROPHONES)
    events: list[dict[str, Any]] = []
    ui.page.on(
        "websocket", lambda socket: socket.on("framereceived", lambda text: events.append(json.loads(text)))
    )
    try:
        page = ui.open("/", model_line=model_line_of(short_stream_server))
        page.get_by_role("button", name="Start live").click()
        sync_api.expect(page.locator("#live-timer-max")).to_have_text("of 7.0 s")

        # At 7 s of audio the service ends the stream: an error event, the summary, a close with the reason;
        # the page says so in the service's words (as a sentence) and keeps the summary.
        error = page.locator("#live-error")
        sync_api.expect(error).to_contain_text("Live analysis stopped: ", timeout=20_000)
        refusal = next(e["error"] for e in events if e["type"] == "error")
        assert refusal["type"] == "stream_too_long"
        words = refusal["message"][0].upper() + refusal["message"][1:]
        words += "" if words.endswith((".", "!", "?")) else "."
        sync_api.expect(error).to_have_text(
            f"Live analysis stopped: {words} The summary of what was heard is below. "
            "Press “Start live” to start again."
        )
        assert [e["type"] for e in events][-2:] == ["error", "summary"]
        sync_api.expect(error).to_have_attribute("role", "alert")
        drawn = shown_windows(page)
        assert drawn and all(w["lag"] <= 2.0 for w in drawn)
        sync_api.expect(page.locator("#timeline-summary")).to_be_visible()
        sync_api.expect(page.locator("#timeline-bands .band").first).to_be_visible()
        assert open_microphones(page) == 0
        assert contrast_failures(page) == []
        page.screenshot(path=screenshot_dir / "20-live-ended-by-the-service.png", full_page=True)

        # A new session starts cleanly and can be stopped before the limit.
        page.get_by_role("button", name="Start live").click()
        sync_api.expect(page.locator("#live-status")).to_contain_text("Listening")
        sync_api.expect(error).to_be_empty()
        sync_api.expect(page.locator("#window-list li").first).to_be_attached(timeout=10_000)
        page.get_by_role("button", name="Stop live").click()
        sync_api.expect(page.locator("#live-status")).to_have_text(
            "Stopped. The summary of the session is below.", timeout=30_000
        )
        sync_api.expect(error).to_be_empty()
        assert open_microphones(page) == 0

        # An abrupt end: the connection is cut after the first window, with no error event and no reason.
        def cut_after_first_window(route: Any) -> None:
            service = route.connect_to_server()

            def forward(message: str | bytes) -> None:
                route.send(message)
                if isinstance(message, str) and json.loads(message)["type"] == "window":
                    route.close(code=1011)
                    service.close()

            service.on_message(forward)

        page.route_web_socket(re.compile(r"/v1/stream$"), cut_after_first_window)
        page.get_by_role("button", name="Start live").click()
        sync_api.expect(error).to_have_text(
            "Live analysis stopped: The service had an internal error. What was drawn is kept below. "
            "Press “Start live” to start again.",
            timeout=15_000,
        )
        assert len(shown_windows(page)) == 1
        sync_api.expect(page.locator("#timeline-bands .band")).to_have_count(1)
        assert open_microphones(page) == 0
        sync_api.expect(page.get_by_role("button", name="Start live")).to_be_enabled()
    finally:
        ui.close()
