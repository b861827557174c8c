"""Live streams over the WebSocket /v1/stream against a real uvicorn server: the protocol, WebM/Opus,
limits, API keys, bad input and shutdown; with real speech, agreement with POST /v1/timeline at real
time pace, and a stream sent 20x too fast."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
import websockets
from service_support import ModelGate, encode_pyav, serve, wait_until

from benchmarks.streaming import StreamRun, stream_audio, ws_url
from service.app import create_app
from service.settings import ServiceSettings
from shared.constants import EMOTIONS, SAMPLE_RATE
from shared.signals import speech_like

KEY = "stream-test-key-0123456789"
README = Path(__file__).resolve().parents[2] / "README.md"


def conversation() -> np.ndarray:
    """About 10 s: silence, a short utterance, a pause, a long one (more than a window), silence."""
    rng = np.random.default_rng(1)

    def quiet(seconds: float) -> np.ndarray:
        return (0.002 * rng.standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32)

    return np.concatenate(
        [quiet(0.6), speech_like(2.0, seed=3), quiet(1.2), speech_like(4.6, seed=3), quiet(1.6)]
    )


def settings_for(bundle: Path, **overrides: Any) -> ServiceSettings:
    values: dict[str, Any] = {"bundle": bundle, "device": "cpu", "worker_threads": 1, **overrides}
    return ServiceSettings(**values)


@pytest.fixture(scope="module")
def server(egemaps_bundle: Path) -> Iterator[Any]:
    app = create_app(
        settings_for(
            egemaps_bundle,
            stream_max=3,
            stream_idle_s=1.5,
            stream_max_lead_s=60.0,
            stream_max_seconds=20.0,
            header_timeout_s=2.0,
        )
    )
    with serve(app) as running:
        wait_until(lambda: httpx.get(running.url + "/ready").status_code == 200, timeout=120)
        yield running


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def exchange(
    url: str, *messages: str | bytes, wait: float = 10.0
) -> tuple[list[dict], int | None, str]:
    """Send ``messages``, then collect events until the server closes: (events, close code, reason)."""
    events: list[dict] = []
    async with websockets.connect(url) as ws:

        async def receive() -> None:
            with contextlib.suppress(websockets.ConnectionClosed):
                async for raw in ws:
                    events.append(json.loads(raw))

        receiver = asyncio.ensure_future(receive())
        with contextlib.suppress(websockets.ConnectionClosed):
            for message in messages:
                await ws.send(message)
        await asyncio.wait_for(receiver, wait)
        return events, ws.close_code, ws.close_reason or ""


START = json.dumps({"type": "start", "format": "s16le", "sample_rate": SAMPLE_RATE, "channels": 1})


# --- the protocol ----------------------------------------------------------------------------------


def test_a_stream_gets_speech_events_windows_and_a_summary(server: Any) -> None:
    wave = conversation()
    result: StreamRun = run(stream_audio(ws_url(server.url), wave, speed=10.0))
    assert result.close_code == 1000, result.close_reason
    kinds = [e["type"] for e in result.events]
    assert kinds[0] == "ready" and kinds[-1] == "summary"
    ready = result.events[0]
    assert ready["window_seconds"] == 3.0 and ready["labels"] == list(EMOTIONS)
    starts, ends = result.of_type("speech_start"), result.of_type("speech_end")
    assert len(starts) == len(ends) == 2
    assert 0.2 < starts[0]["time"] < 0.8 and 3.6 < starts[1]["time"] < 4.0  # speech at 0.6 s and 3.8 s
    windows = result.of_type("window")
    assert len(windows) >= 3  # one for the short utterance, at least two in the long one
    for w in windows:
        assert set(w["probabilities"]) == set(EMOTIONS)
        assert abs(sum(w["probabilities"].values()) - 1) < 1e-3
        assert w["label"] == max(w["probabilities"], key=w["probabilities"].get)
        assert w["audio_seconds"] >= w["end"]  # a window is sent only once its audio has arrived
    # events come in time order: each region's windows after its start event
    assert kinds.index("window") > kinds.index("speech_start")
    timeline = result.of_type("summary")[0]["timeline"]
    assert [(w["start"], w["end"]) for w in timeline["windows"]] == [(w["start"], w["end"]) for w in windows]
    assert timeline["summary"]["duration_s"] == pytest.approx(wave.shape[0] / SAMPLE_RATE, abs=0.01)
    assert len(timeline["speech_regions"]) == 2 and timeline["segments"]
    assert timeline["summary"]["dominant"] in EMOTIONS


def test_a_webm_opus_stream_is_decoded_as_it_arrives(server: Any) -> None:
    wave = conversation()
    data = encode_pyav(wave, "webm", "libopus", codec_rate=48000)
    chunks = [data[i : i + 2000] for i in range(0, len(data), 2000)]
    start = {"type": "start", "format": "webm"}
    frame_s = wave.shape[0] / SAMPLE_RATE / len(chunks)
    result = run(
        stream_audio(ws_url(server.url), frames=chunks, start=start, frame_seconds=frame_s, speed=10.0)
    )
    assert result.close_code == 1000, result.close_reason
    assert len(result.of_type("speech_start")) == 2
    assert result.of_type("window")
    summary = result.of_type("summary")[0]["timeline"]["summary"]
    assert summary["duration_s"] == pytest.approx(wave.shape[0] / SAMPLE_RATE, abs=0.1)


def test_float32_at_48_khz_stereo_is_resampled(server: Any) -> None:
    wave = conversation()
    import soxr

    wide = soxr.resample(wave, SAMPLE_RATE, 48000).astype("<f4")
    stereo = np.stack([wide, wide], axis=1)
    step = 4800
    frames = [stereo[i : i + step].tobytes() for i in range(0, stereo.shape[0], step)]
    start = {"type": "start", "format": "f32le", "sample_rate": 48000, "channels": 2}
    result = run(stream_audio(ws_url(server.url), frames=frames, start=start, speed=10.0))
    assert result.close_code == 1000, result.close_reason
    assert len(result.of_type("speech_start")) == 2
    summary = result.of_type("summary")[0]["timeline"]["summary"]
    assert summary["duration_s"] == pytest.approx(wave.shape[0] / SAMPLE_RATE, abs=0.05)


def test_a_stream_outlives_the_header_deadline(server: Any) -> None:
    """SER_HEADER_TIMEOUT_S (2 s here) bounds the HTTP request head, not the WebSocket after it."""
    wave = conversation()[: 4 * SAMPLE_RATE]
    result = run(stream_audio(ws_url(server.url), wave, speed=1.5))
    assert result.send_seconds > 2.5
    assert result.close_code == 1000, result.close_reason


def test_a_stream_at_its_length_limit_gets_its_summary_and_a_reason(server: Any) -> None:
    wave = np.tile(conversation(), 3)  # 30 s; SER_STREAM_MAX_SECONDS is 20 here
    result = run(stream_audio(ws_url(server.url), wave, speed=20.0))
    assert result.close_code == 1008
    assert result.of_type("error")[0]["error"]["type"] == "stream_too_long"
    assert "SER_STREAM_MAX_SECONDS" in result.close_reason
    summary = result.of_type("summary")[0]
    assert 20.0 <= summary["audio_seconds"] < 20.5
    assert summary["timeline"]["windows"]


def test_windows_the_model_cannot_take_in_time_are_skipped_not_queued(egemaps_bundle: Path) -> None:
    """While the model is held, a stream's windows wait SER_STREAM_MAX_DELAY_S at most; then they are
    skipped with a warning, and the stream still ends with its summary once the model is back."""
    gate = ModelGate()
    app = create_app(
        settings_for(egemaps_bundle, stream_max_lead_s=60.0, stream_max_delay_s=0.5),
        predictor_factory=gate.factory,
    )
    with serve(app) as running:
        wait_until(lambda: httpx.get(running.url + "/ready").status_code == 200, timeout=120)
        gate.close()
        threading.Timer(4.0, gate.open).start()
        result = run(stream_audio(ws_url(running.url), conversation(), speed=2.0))
    assert result.close_code == 1000, result.close_reason
    warnings = [e["warning"] for e in result.of_type("warning")]
    assert warnings and all(w["type"] == "window_dropped" for w in warnings)
    assert any("SER_STREAM_MAX_DELAY_S" in w["message"] for w in warnings)
    timeline = result.of_type("summary")[0]["timeline"]
    assert any(w.startswith("window_dropped") for w in timeline["warnings"])
    assert len(timeline["windows"]) == len(result.of_type("window"))


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "error_type", "code"),
    [
        ([b"\x00\x01" * 800], "invalid_message", 1008),  # a frame before start
        (["not json"], "invalid_message", 1008),
        (
            [json.dumps({"type": "start", "format": "s16le", "sample_rate": 12345})],
            "unsupported_format",
            1008,
        ),
        ([json.dumps({"type": "start", "format": "mp3"})], "invalid_start", 1008),
        ([json.dumps({"type": "start", "channels": 0})], "invalid_start", 1008),
        ([START, b"\x01\x02\x03"], "audio_decode_error", 1007),  # half a sample
        (
            [json.dumps({"type": "start", "format": "f32le"}), np.random.default_rng(0).bytes(6400)],
            "audio_decode_error",
            1007,
        ),  # garbage bytes are no float audio
        ([json.dumps({"type": "start", "format": "webm"}), b"garbage" * 600], "audio_decode_error", 1007),
        ([START, json.dumps({"type": "pause"})], "invalid_message", 1008),
        ([], "stream_idle", 1008),  # nothing at all
        ([START], "stream_idle", 1008),  # a start, then nothing
    ],
    ids=[
        "frame-before-start",
        "not-json",
        "unsupported-rate",
        "unknown-format",
        "no-channels",
        "partial-sample",
        "garbage-f32",
        "garbage-webm",
        "unknown-message",
        "silent-client",
        "idle-after-start",
    ],
)
def test_bad_input_gets_a_typed_error_and_a_clean_close(
    server: Any, messages: list, error_type: str, code: int
) -> None:
    events, close_code, reason = run(exchange(ws_url(server.url), *messages))
    errors = [e for e in events if e["type"] == "error"]
    assert len(errors) == 1, events
    assert errors[0]["error"]["type"] == error_type
    message = errors[0]["error"]["message"]
    assert close_code == code
    assert reason and message.startswith(reason.removesuffix("..."))
    if error_type == "unsupported_format":
        assert "16000" in message and "48000" in message  # says what is accepted


def test_bad_streams_leave_other_streams_and_requests_alone(server: Any, good_wav: bytes) -> None:
    """While broken streams come and go, a good stream and HTTP predictions carry on."""
    wave = conversation()
    good: dict[str, StreamRun] = {}
    thread = threading.Thread(
        target=lambda: good.update(ok=run(stream_audio(ws_url(server.url), wave, speed=3.0))), daemon=True
    )
    thread.start()
    bad = [
        [b"\x00" * 3200],
        [json.dumps({"type": "start", "format": "f32le"}), np.random.default_rng(1).bytes(6400)],
        [
            json.dumps({"type": "start", "format": "webm"}),
            b"\x1a\x45\xdf\xa3" + b"\xff" * 4000,
        ],  # a header, then junk
    ]
    for messages in bad:
        events, code, _ = run(exchange(ws_url(server.url), *messages))
        assert code in (1007, 1008) and events[-1]["type"] == "error"
        answer = httpx.post(server.url + "/v1/predict", files={"file": ("a.wav", good_wav)}, timeout=60)
        assert answer.status_code == 200
    thread.join(60)
    assert good["ok"].close_code == 1000 and good["ok"].of_type("summary")
    assert not good["ok"].of_type("error")


def test_streams_beyond_the_limit_are_refused_with_a_reason(server: Any) -> None:
    async def scenario() -> tuple[list, int | None, str]:
        held = [await websockets.connect(ws_url(server.url)) for _ in range(3)]  # SER_STREAM_MAX=3
        try:
            for ws in held:
                await ws.send(START)
                assert json.loads(await ws.recv())["type"] == "ready"
            return await exchange(ws_url(server.url), START)
        finally:
            for ws in held:
                await ws.close()

    events, code, reason = run(scenario())
    assert code == 1013
    assert events[-1]["error"]["type"] == "too_many_streams"
    assert "SER_STREAM_MAX" in reason
    # once they are closed, a new stream is admitted
    wait_until(lambda: run(exchange(ws_url(server.url), START, json.dumps({"type": "stop"})))[1] == 1000)


def test_info_says_what_a_stream_accepts(server: Any) -> None:
    live = httpx.get(server.url + "/v1/info").json()["live_stream"]
    assert live["path"] == "/v1/stream" and live["formats"] == ["s16le", "f32le", "webm"]
    assert 16000 in live["pcm_sample_rates"] and 12345 not in live["pcm_sample_rates"]
    # what info lists is what a stream takes: every rate starts a stream
    for rate in (live["pcm_sample_rates"][0], live["pcm_sample_rates"][-1]):
        start = json.dumps({"type": "start", "format": "s16le", "sample_rate": rate, "channels": 2})
        events, code, _ = run(exchange(ws_url(server.url), start, json.dumps({"type": "stop"})))
        assert (
            code == 1000
            and events[0]["type"] == "ready"
            and events[0]["window_seconds"] == live["window_seconds"]
        )


def test_a_frame_over_the_size_limit_closes_the_stream_with_1009(server: Any) -> None:
    too_big = bytes(ServiceSettings.model_fields["stream_max_frame_bytes"].default + 2)
    events, code, _ = run(exchange(ws_url(server.url), START, too_big))
    assert code == 1009 and {e["type"] for e in events} <= {"ready"}
    # the server goes on: the next stream is served
    assert run(exchange(ws_url(server.url), START, json.dumps({"type": "stop"})))[1] == 1000


def test_a_cross_site_page_may_not_open_a_stream(server: Any) -> None:
    async def scenario() -> tuple[int | None, str]:
        async with websockets.connect(ws_url(server.url), origin="https://evil.example") as ws:  # type: ignore[arg-type]
            with pytest.raises(websockets.ConnectionClosed):  # the close may come before the send
                await ws.send(START)
                while True:
                    await ws.recv()
            return ws.close_code, ws.close_reason

    code, reason = run(scenario())
    assert code == 1008 and "SER_CORS_ORIGINS" in reason


def test_the_readme_client_runs_as_written(server: Any, tmp_path: Path) -> None:
    (example,) = [
        b for b in re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if "/v1/stream" in b
    ]
    assert 'follow("speech.wav")' in example
    sf.write(tmp_path / "speech.wav", (conversation() * 32767).astype(np.int16), SAMPLE_RATE)
    code = example.replace("ws://127.0.0.1:8000/v1/stream", ws_url(server.url))
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    windows = [line for line in lines if re.match(r"^\s*[\d.]+-\s*[\d.]+ s  \w+\s+0\.\d\d$", line)]
    assert len(windows) >= 3, done.stdout
    assert lines[-1].startswith("dominant: ") and lines[-1].split()[-1] in EMOTIONS


# --- API keys -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_server(egemaps_bundle: Path) -> Iterator[Any]:
    app = create_app(settings_for(egemaps_bundle, api_keys=[KEY], stream_max_lead_s=60.0))
    with serve(app) as running:
        wait_until(lambda: httpx.get(running.url + "/ready").status_code == 200, timeout=120)
        yield running


def test_api_keys_apply_to_streams(keyed_server: Any) -> None:
    url = ws_url(keyed_server.url)
    stop = json.dumps({"type": "stop"})
    events, code, reason = run(exchange(url, START, stop))
    assert code == 1008 and events[-1]["error"]["type"] == "unauthorized"
    start = json.loads(START)
    wrong = json.dumps({**start, "api_key": "wrong"})
    assert run(exchange(url, wrong, stop))[0][-1]["error"]["type"] == "unauthorized"
    right = json.dumps({**start, "api_key": KEY})  # browsers cannot set headers: the first message
    events, code, _ = run(exchange(url, right, stop))
    assert code == 1000 and [e["type"] for e in events] == ["ready", "summary"]
    header = run(stream_audio(url, conversation()[:SAMPLE_RATE], headers={"X-API-Key": KEY}, speed=5.0))
    assert header.close_code == 1000


# --- shutdown -------------------------------------------------------------------------------------


def test_a_stream_open_at_shutdown_gets_its_summary_and_a_going_away_close(egemaps_bundle: Path) -> None:
    app = create_app(settings_for(egemaps_bundle, stream_max_lead_s=60.0))
    result: dict[str, StreamRun] = {}
    with serve(app, graceful_timeout=10.0) as running:
        wait_until(lambda: httpx.get(running.url + "/ready").status_code == 200, timeout=120)
        wave = np.tile(conversation(), 3)
        thread = threading.Thread(
            target=lambda: result.update(run=run(stream_audio(ws_url(running.url), wave, speed=2.0))),
            daemon=True,
        )
        thread.start()
        wait_until(lambda: app.state.streams.streams, timeout=30)
        time.sleep(5.0)
    thread.join(30)
    got = result["run"]
    assert got.close_code == 1001
    assert got.of_type("error")[0]["error"]["type"] == "shutting_down"
    summary = got.of_type("summary")[0]["timeline"]["summary"]
    assert 5.0 < summary["duration_s"] < wave.shape[0] / SAMPLE_RATE


# --- real speech --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_server(timeline_bundle: Path) -> Iterator[Any]:
    """A real eGeMAPS bundle; windows are classified one by one (SER_TIMELINE_SESSION=false), so that a
    live window and the timeline's window over the same audio can be compared: with the session
    classifier, a live window is normalised with the windows heard so far, the timeline's with all."""
    app = create_app(settings_for(timeline_bundle, timeline_session=False))
    with serve(app) as running:
        wait_until(lambda: httpx.get(running.url + "/ready").status_code == 200, timeout=120)
        yield running


def label_at(windows: list[dict], t: float) -> str | None:
    """The label of the window of ``windows`` whose span holds ``t`` and whose centre is nearest it."""
    holding = [w for w in windows if w["start"] <= t < w["end"]]
    if not holding:
        return None
    return min(holding, key=lambda w: abs((w["start"] + w["end"]) / 2 - t))["label"]


@pytest.mark.realdata
def test_real_time_windows_match_the_timeline_of_the_same_audio(
    real_server: Any, ravdess_recording: tuple[Path, list, list]
) -> None:
    path, _, _ = ravdess_recording
    wave, rate = sf.read(path, dtype="int16")  # the FLAC's own samples, sent as they are
    assert rate == SAMPLE_RATE
    result = run(stream_audio(ws_url(real_server.url), wave, speed=1.0, timeout=300))
    assert result.close_code == 1000, result.close_reason
    timeline = httpx.post(
        real_server.url + "/v1/timeline", files={"file": ("r.flac", path.read_bytes())}, timeout=300
    ).json()
    live = result.of_type("window")
    assert len(live) >= 20 and not result.of_type("warning")
    same = [label_at(timeline["windows"], (w["start"] + w["end"]) / 2) == w["label"] for w in live]
    agreement = float(np.mean(same))
    spans = {(w["start"], w["end"]) for w in timeline["windows"]}
    shared = np.mean([(w["start"], w["end"]) in spans for w in live])
    print(f"live windows agreeing with the timeline: {agreement:.3f} of {len(live)}; same span {shared:.3f}")
    assert agreement >= 0.9
    assert [(r["start"], r["end"]) for r in result.of_type("summary")[0]["timeline"]["speech_regions"]] == [
        (r["start"], r["end"]) for r in timeline["speech_regions"]
    ]
    delays = result.window_delays()
    assert max(delays) < 2.0, delays


@pytest.mark.realdata
def test_a_stream_sent_20x_faster_than_real_time_is_refused(
    real_server: Any, ravdess_recording: tuple[Path, list, list]
) -> None:
    path, _, _ = ravdess_recording
    wave, _ = sf.read(path, dtype="float32")
    result = run(stream_audio(ws_url(real_server.url), wave, speed=20.0, timeout=120))
    assert result.close_code == 1008
    error = result.of_type("error")[0]["error"]
    assert error["type"] == "stream_too_fast" and "/v1/timeline" in error["message"]
    # refused once the audio ran SER_STREAM_MAX_LEAD_S (10 s) ahead of the clock: not buffered
    heard = result.of_type("summary")[0]["audio_seconds"]
    assert heard < 20.0
    assert result.send_seconds < 10.0
    assert httpx.get(real_server.url + "/ready").status_code == 200
