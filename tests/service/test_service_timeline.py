"""Long recordings through the service: POST /v1/timeline, durable jobs (with a restart), limits, and
``ser timeline``."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient
from service_support import ModelGate, ready_client, wait_until
from support import wav_bytes

from service.app import create_app
from service.settings import ServiceSettings
from shared.constants import SAMPLE_RATE


def tone_wav(seconds: float) -> bytes:
    """A steady tone: audio, but no speech."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return wav_bytes((0.2 * np.sin(2 * np.pi * 300 * t)).astype(np.float32))


def tone_flac(seconds: float) -> bytes:
    import io

    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    buf = io.BytesIO()
    sf.write(buf, 0.2 * np.sin(2 * np.pi * 300 * t), SAMPLE_RATE, format="FLAC")
    return buf.getvalue()


def settings_for(bundle: Path, **overrides: object) -> ServiceSettings:
    return ServiceSettings(bundle=bundle, device="cpu", worker_threads=1, **overrides)  # type: ignore[arg-type]


def wait_for_job(client: TestClient, location: str, timeout: float = 120.0) -> dict:
    body: dict = {}

    def ended() -> bool:
        nonlocal body
        body = client.get(location).json()
        return body["state"] not in ("queued", "running")

    wait_until(ended, timeout=timeout, interval=0.1)
    return body


# --- without speech: bad input and limits --------------------------------------------------------


@pytest.fixture
def timeline_client(egemaps_bundle: Path):
    with TestClient(
        create_app(settings_for(egemaps_bundle, timeline_max_seconds=20, timeline_max_bytes=400_000))
    ) as c:
        yield ready_client(c)


def test_a_recording_without_speech_gets_an_empty_timeline(timeline_client):
    reply = timeline_client.post("/v1/timeline", files={"file": ("tone.wav", tone_wav(6.0))})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["reason"] == "no_speech"
    assert body["windows"] == [] and body["segments"] == [] and body["speech_regions"] == []
    assert body["summary"]["duration_s"] == pytest.approx(6.0)
    assert body["summary"]["dominant"] is None
    assert body["filename"] == "tone.wav" and body["model"]["name"]


def test_a_recording_over_the_length_limit_is_refused_naming_the_setting(timeline_client):
    long = tone_flac(21.0)
    assert len(long) < 400_000
    reply = timeline_client.post("/v1/timeline", content=long, headers={"content-type": "audio/flac"})
    assert reply.status_code == 422
    body = reply.json()
    assert body["error_type"] == "audio_too_long"
    assert "SER_TIMELINE_MAX_SECONDS" in body["error"] and "/v1/jobs" in body["error"]


def test_an_upload_over_the_size_limit_is_refused_naming_the_setting(timeline_client):
    big = tone_wav(15.0)  # 480 KB
    for reply in (
        timeline_client.post("/v1/timeline", files={"file": ("big.wav", big)}),
        timeline_client.post("/v1/timeline", content=big, headers={"content-type": "audio/wav"}),
    ):
        assert reply.status_code == 413
        assert reply.json()["error_type"] == "payload_too_large"
        assert "SER_TIMELINE_MAX_BYTES" in reply.json()["error"]


def test_bad_bodies_get_typed_errors(timeline_client):
    text = timeline_client.post("/v1/timeline", content=b"hello", headers={"content-type": "text/plain"})
    assert text.status_code == 415 and text.json()["error_type"] == "unsupported_media_type"
    empty = timeline_client.post("/v1/timeline", content=b"", headers={"content-type": "audio/wav"})
    assert empty.status_code == 422 and empty.json()["error_type"] == "invalid_request"
    no_file = timeline_client.post("/v1/timeline", files={"other": ("a.wav", tone_wav(1.0))})
    assert no_file.status_code == 422 and "'file'" in no_file.json()["error"]
    junk = timeline_client.post("/v1/timeline", files={"file": ("notes.txt", b"just some text, not audio")})
    assert junk.status_code == 415 and junk.json()["error_type"] == "unsupported_format"
    assert "notes.txt" in junk.json()["error"]  # the client's name, never the temporary file's


def test_unknown_jobs_are_404(timeline_client):
    for reply in (timeline_client.get("/v1/jobs/nope"), timeline_client.delete("/v1/jobs/nope")):
        assert reply.status_code == 404
        assert reply.json()["error_type"] == "not_found"


def test_a_job_whose_file_is_not_audio_fails_naming_the_clients_file(timeline_client):
    created = timeline_client.post("/v1/jobs", files={"file": ("notes.txt", b"just some text, not audio")})
    assert created.status_code == 202
    failed = wait_for_job(timeline_client, created.headers["location"])
    assert failed["state"] == "failed" and failed["error"]["error_type"] == "unsupported_format"
    assert failed["error"]["error"].startswith("notes.txt: this is text, not audio")
    assert created.json()["id"] not in failed["error"]["error"]


def test_a_job_without_speech_is_done_with_an_empty_timeline(timeline_client):
    created = timeline_client.post("/v1/jobs", files={"file": ("tone.wav", tone_wav(5.0))})
    assert created.status_code == 202
    assert created.headers["location"] == f"/v1/jobs/{created.json()['id']}"
    assert created.json()["state"] == "queued"
    done = wait_for_job(timeline_client, created.headers["location"])
    assert done["state"] == "done" and done["progress"] == 1.0
    assert done["result"]["reason"] == "no_speech"
    assert done["expires_at"] > done["finished_at"]


def test_the_openapi_schema_documents_timelines_and_jobs(timeline_client):
    schema = timeline_client.get("/openapi.json").json()
    assert {"/v1/timeline", "/v1/jobs", "/v1/jobs/{job_id}"} <= set(schema["paths"])
    assert set(schema["paths"]["/v1/jobs/{job_id}"]) == {"get", "delete"}
    components = schema["components"]["schemas"]
    summary = components["TimelineSummaryModel"]["properties"]
    assert {"speech_s", "emotion_seconds", "mean_probabilities", "dominant", "changes"} <= set(summary)
    assert summary["changes"]["examples"] == [7]
    assert "examples" in components["TimelineSegmentModel"]["properties"]["start"]
    assert "audio/*" in schema["paths"]["/v1/timeline"]["post"]["requestBody"]["content"]


# --- with real speech ------------------------------------------------------------------------------


@pytest.mark.realdata
def test_the_timeline_follows_each_clips_own_prediction(timeline_bundle, ravdess_recording):
    """Windows over each clip of a RAVDESS-built recording give the label POST /v1/predict gives the clip
    (the clip as it sits in the recording), for at least 90% of the clips; the emotion diarization error
    rate against the true labels is computed as well (it is reported by the benchmark)."""
    from benchmarks.recordings import labelled_time

    path, truth, _ = ravdess_recording
    wave, _ = sf.read(path, dtype="float32")
    settings = settings_for(timeline_bundle, timeline_session=False)
    with TestClient(create_app(settings)) as client:
        ready_client(client)
        reply = client.post("/v1/timeline", files={"file": ("recording.flac", path.read_bytes())})
        assert reply.status_code == 200, reply.text
        timeline = reply.json()
        assert timeline["classifier"] == "single" and timeline["method"] == "exact"
        agree = []
        for t in truth:
            # the clip alone, as it sits in the recording, through /v1/predict
            clip = wave[int(round(t.clip_start * SAMPLE_RATE)) : int(round(t.clip_end * SAMPLE_RATE))]
            own = client.post("/v1/predict", files={"file": ("clip.wav", wav_bytes(clip))}).json()["label"]
            inside = [
                w["label"] for w in timeline["windows"] if t.start <= (w["start"] + w["end"]) / 2 < t.end
            ]
            majority = collections.Counter(inside).most_common(1)[0][0] if inside else None
            agree.append(majority == own)
    assert np.mean(agree) >= 0.9, agree
    scores = labelled_time(truth, [(s["start"], s["end"], s["label"]) for s in timeline["segments"]])
    assert 0.0 <= scores["eder"] < 1.0
    assert scores["missed_s"] < 0.2 * scores["total_s"]


@pytest.mark.realdata
def test_jobs_survive_a_restart(timeline_bundle, ravdess_recording, tmp_path):
    """A finished job is still there after a restart, the one running when the service stopped reads
    interrupted, and a new job runs."""
    path, _, _ = ravdess_recording
    data = path.read_bytes()
    settings = settings_for(timeline_bundle, jobs_dir=tmp_path / "jobs")
    gate = ModelGate()
    with TestClient(create_app(settings, predictor_factory=gate.factory)) as client:
        ready_client(client)
        first = client.post("/v1/jobs", files={"file": ("first.flac", data)}).json()
        done = wait_for_job(client, f"/v1/jobs/{first['id']}")
        assert done["state"] == "done" and done["result"]["segments"]
        gate.close()
        second = client.post("/v1/jobs", content=data, headers={"content-type": "audio/flac"}).json()
        assert gate.entered.wait(60)  # the job is inside the model now
        assert client.get(f"/v1/jobs/{second['id']}").json()["state"] == "running"
        metrics = client.get("/metrics").text
        assert 'ser_jobs{state="running"} 1.0' in metrics and 'ser_jobs{state="done"} 1.0' in metrics
        threading.Timer(1.0, gate.open).start()  # the model call returns while the service stops
    with TestClient(create_app(settings)) as client:
        ready_client(client)
        assert client.get(f"/v1/jobs/{first['id']}").json() == {**done, "expires_at": done["expires_at"]}
        interrupted = client.get(f"/v1/jobs/{second['id']}").json()
        assert interrupted["state"] == "interrupted"
        assert interrupted["error"]["error_type"] == "interrupted" and interrupted["result"] is None
        third = client.post("/v1/jobs", files={"file": ("third.flac", data)})
        assert third.status_code == 202
        assert wait_for_job(client, third.headers["location"])["state"] == "done"
        assert not list((tmp_path / "jobs" / "uploads").iterdir())  # uploads go once their job ends
        assert 'ser_timeline_audio_seconds_total{route="jobs"}' in client.get("/metrics").text


@pytest.mark.realdata
def test_a_running_job_can_be_cancelled_and_a_full_service_says_retry_later(
    timeline_bundle, ravdess_recording
):
    path, _, _ = ravdess_recording
    data = path.read_bytes()
    gate = ModelGate()
    settings = settings_for(timeline_bundle, jobs_max=1, retry_after_s=7)
    with TestClient(create_app(settings, predictor_factory=gate.factory)) as client:
        ready_client(client)
        gate.close()
        job = client.post("/v1/jobs", files={"file": ("a.flac", data)}).json()
        assert gate.entered.wait(60)
        for refused in (
            client.post("/v1/jobs", files={"file": ("b.flac", data)}),
            client.post("/v1/timeline", files={"file": ("b.flac", data)}),
        ):
            assert refused.status_code == 503
            assert refused.json()["error_type"] == "overloaded" and "SER_JOBS_MAX" in refused.json()["error"]
            assert refused.headers["retry-after"] == "7"
        # single predictions are not held up behind the job for long: the model runs them between regions
        cancelled = client.delete(f"/v1/jobs/{job['id']}").json()
        assert cancelled["state"] == "cancelled" and cancelled["error"]["error_type"] == "cancelled"
        gate.open()
        wait_until(lambda: client.post("/v1/jobs", files={"file": ("c.flac", data)}).status_code == 202)


@pytest.mark.realdata
def test_single_predictions_interleave_with_a_running_job(timeline_bundle, ravdess_recording):
    path, _, clips = ravdess_recording
    with TestClient(create_app(settings_for(timeline_bundle))) as client:
        ready_client(client)
        job = client.post("/v1/jobs", files={"file": ("a.flac", path.read_bytes())}).json()
        wait_until(lambda: client.get(f"/v1/jobs/{job['id']}").json()["state"] == "running", interval=0.01)
        reply = client.post("/v1/predict", files={"file": ("clip.flac", clips[0].path.read_bytes())})
        assert reply.status_code == 200
        state = client.get(f"/v1/jobs/{job['id']}").json()
        assert state["state"] == "running" and state["progress"] < 1.0
        assert wait_for_job(client, f"/v1/jobs/{job['id']}")["state"] == "done"


# --- the command line --------------------------------------------------------------------------------


def run_ser(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


@pytest.mark.realdata
def test_ser_timeline_writes_json_csv_and_a_plot(timeline_bundle, ravdess_recording, tmp_path):
    path, _, _ = ravdess_recording
    bad = tmp_path / "notes.txt"
    bad.write_text("not audio")
    out = tmp_path / "out"
    done = run_ser(
        "timeline",
        str(path),
        str(bad),
        "--bundle",
        str(timeline_bundle),
        "--format",
        "csv",
        "--plot",
        "--output-dir",
        str(out),
        cwd=tmp_path,
    )
    assert done.returncode == 1  # one file failed
    assert "notes.txt\terror: notes.txt: this is text, not audio" in done.stderr
    rows = (out / "recording.timeline.csv").read_text().splitlines()
    assert rows[0].startswith("file,start,end,label,confidence,uncertain,neutral") and len(rows) > 20
    png = (out / "recording.timeline.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    printed = run_ser("timeline", str(path), "--bundle", str(timeline_bundle), cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    body = json.loads(printed.stdout)
    assert body["file"] == str(path) and body["summary"]["dominant"] and body["segments"]


def test_ser_timeline_usage_errors_exit_2(tmp_path, egemaps_bundle):
    done = run_ser("timeline", "x.wav", "--window", "0.1", "--bundle", str(egemaps_bundle), cwd=tmp_path)
    assert done.returncode == 2 and "window_seconds" in done.stderr
    assert run_ser("timeline", cwd=tmp_path).returncode == 2


def test_ser_timeline_on_a_file_without_speech(tmp_path, egemaps_bundle):
    (tmp_path / "tone.wav").write_bytes(tone_wav(4.0))
    done = run_ser("timeline", "tone.wav", "--bundle", str(egemaps_bundle), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["reason"] == "no_speech"


@pytest.mark.realdata
def test_ser_timeline_prints_one_csv_table_for_several_files(real_data, tmp_path):
    files = [str(real_data / "formats" / name) for name in ("crema_angry.webm", "crema_happy.mp3")]
    done = run_ser("timeline", *files, "--format", "csv", cwd=tmp_path)  # the demo model
    assert done.returncode == 0, done.stderr
    rows = done.stdout.splitlines()
    assert rows[0].startswith("file,start,end,label") and sum(r.startswith("file,") for r in rows) == 1
    assert {r.split(",")[0] for r in rows[1:]} == set(files)


def test_the_long_recording_routes_need_the_api_key(egemaps_bundle):
    with TestClient(create_app(settings_for(egemaps_bundle, api_keys="k1"))) as client:  # type: ignore[arg-type]
        ready_client(client)
        assert (
            client.post(
                "/v1/timeline", content=tone_wav(1.0), headers={"content-type": "audio/wav"}
            ).status_code
            == 401
        )
        job = client.post(
            "/v1/jobs", content=tone_wav(1.0), headers={"content-type": "audio/wav", "x-api-key": "k1"}
        )
        assert job.status_code == 202
        assert client.get(job.headers["location"]).status_code == 401
        assert client.get(job.headers["location"], headers={"x-api-key": "k1"}).status_code == 200


def test_jobs_are_refused_while_the_model_loads(egemaps_bundle):
    from service.engine import load_predictor

    loaded = threading.Event()

    def slow_factory(settings, bundle_dir):
        loaded.wait(30)
        return load_predictor(settings, bundle_dir)

    with TestClient(create_app(settings_for(egemaps_bundle), predictor_factory=slow_factory)) as client:
        reply = client.post("/v1/jobs", content=tone_wav(1.0), headers={"content-type": "audio/wav"})
        assert reply.status_code == 503 and reply.json()["error_type"] == "not_ready"
        assert "retry-after" in reply.headers
        loaded.set()
        ready_client(client)
        assert (
            client.post("/v1/jobs", content=tone_wav(1.0), headers={"content-type": "audio/wav"}).status_code
            == 202
        )
