"""The resumable, verified downloader and download_cremad, against a real HTTP server on 127.0.0.1.

The server (a thread running ``http.server``) supports Range requests and can be told, per file
and per request, to cut the body short midway, serve wrong bytes, serve a Git LFS pointer,
ignore Range, or answer 404/503. No internet is used.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from training.corpora import CorpusError, DownloadError, DownloadReport, download_cremad, prepare_cremad
from training.corpora.cremad import read_checksums
from training.corpora.download import download_file

POINTER = (
    b"version https://git-lfs.github.com/spec/v1\n"
    b"oid sha256:c6f94b2592487c7556bd86df7df6e8f4420d1b9c11414aeec9d8e5e640b51495\nsize 72862\n"
)


def _wav(seconds: float, freq: float) -> bytes:
    t = np.arange(int(16_000 * seconds)) / 16_000
    buf = io.BytesIO()
    sf.write(
        buf, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 16_000, format="WAV", subtype="PCM_16"
    )
    return buf.getvalue()


@dataclass
class ServerState:
    """What the handler serves and what it saw."""

    files: dict[str, bytes]
    plans: dict[str, list[str]] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    bytes_sent: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def plan(self, name: str, *behaviours: str) -> None:
        """Behaviours for the next requests of ``name``, in order; afterwards it is served normally."""
        self.plans[name] = list(behaviours)

    def ranges(self, name: str) -> list[str | None]:
        return [rng for path, rng in self.requests if path == name]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def do_HEAD(self) -> None:
        body = self.server.state.files.get(self.path.rsplit("/", 1)[-1])
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()

    def do_GET(self) -> None:
        state = self.server.state
        name = self.path.rsplit("/", 1)[-1]
        rng = self.headers.get("Range")
        with state.lock:
            state.requests.append((name, rng))
            queue = state.plans.get(name, [])
            behaviour = queue.pop(0) if queue else "normal"
        body = state.files.get(name)
        if body is None or behaviour == "404":
            self.send_error(404)
            return
        if behaviour == "503":
            self.send_error(503)
            return
        if behaviour == "pointer":
            body = POINTER
        elif behaviour == "wrong":
            body = bytes(b ^ 0x5A for b in body)
        start = 0
        if rng and behaviour != "ignore_range":
            m = re.fullmatch(r"bytes=(\d+)-", rng)
            assert m, f"unexpected Range header {rng!r}"
            start = int(m[1])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if behaviour == "cut":
            payload = payload[: len(payload) // 2]
            self.close_connection = True
        self.wfile.write(payload)
        self.wfile.flush()
        with state.lock:
            state.bytes_sent[name] = state.bytes_sent.get(name, 0) + len(payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: ServerState


NAMES = ("1001_DFA_ANG_XX.wav", "1001_DFA_HAP_XX.wav", "1002_DFA_SAD_XX.wav")


@pytest.fixture
def server() -> Iterator[ServerState]:
    files = {name: _wav(0.4 + 0.2 * i, 200.0 + 50 * i) for i, name in enumerate(NAMES)}
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.state = ServerState(files=files, url=f"http://127.0.0.1:{httpd.server_address[1]}/media/AudioWAV/")
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield httpd.state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def checksums(tmp_path: Path, server: ServerState) -> Path:
    path = tmp_path / "checksums.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "sha256", "size"])
        for name, body in server.files.items():
            writer.writerow([name, hashlib.sha256(body).hexdigest(), len(body)])
    return path


def _download(dest: Path, server: ServerState, checksums: Path, **options: Any) -> DownloadReport:
    settings: dict[str, Any] = {"progress": False, "backoff_s": 0.0, "workers": 2, "timeout_s": 10.0}
    settings.update(options)
    return download_cremad(dest, base_url=server.url, checksums=checksums, **settings)


def _assert_complete(dest: Path, server: ServerState) -> None:
    audio = dest / "AudioWAV"
    assert sorted(p.name for p in audio.iterdir()) == sorted(server.files)  # no .part left behind
    for name, body in server.files.items():
        assert (audio / name).read_bytes() == body


def test_full_download_verifies_and_the_corpus_reads(
    tmp_path: Path, server: ServerState, checksums: Path
) -> None:
    dest = tmp_path / "CREMA-D"
    report = _download(dest, server, checksums)

    assert report.downloaded == tuple(sorted(NAMES))
    assert report.skipped == () and report.failed == () and report.ok
    assert report.summary() == {"downloaded": 3, "skipped": 0, "failed": 0, "failures": {}}
    _assert_complete(dest, server)
    assert all(rng is None for _, rng in server.requests)
    corpus = prepare_cremad(dest)
    assert sorted(corpus.labels) == ["angry", "happy", "sad"]


def test_rerun_skips_everything_without_a_request(
    tmp_path: Path, server: ServerState, checksums: Path
) -> None:
    dest = tmp_path / "CREMA-D"
    _download(dest, server, checksums)
    seen = len(server.requests)

    report = _download(dest, server, checksums)
    assert report.skipped == tuple(sorted(NAMES))
    assert report.downloaded == () and report.failed == ()
    assert len(server.requests) == seen
    _assert_complete(dest, server)


def test_a_cut_download_resumes_with_range(tmp_path: Path, server: ServerState, checksums: Path) -> None:
    name = NAMES[1]
    server.plan(name, "cut")
    dest = tmp_path / "CREMA-D"
    report = _download(dest, server, checksums)

    assert report.ok and name in report.downloaded
    _assert_complete(dest, server)
    half = len(server.files[name]) // 2
    assert server.ranges(name) == [None, f"bytes={half}-"]
    assert server.bytes_sent[name] == len(server.files[name])  # nothing fetched twice


def test_a_part_file_left_by_an_earlier_run_is_resumed(
    tmp_path: Path, server: ServerState, checksums: Path
) -> None:
    name = NAMES[2]
    dest = tmp_path / "CREMA-D"
    part = dest / "AudioWAV" / f"{name}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(server.files[name][:1000])

    report = _download(dest, server, checksums)
    assert name in report.downloaded
    _assert_complete(dest, server)
    assert server.ranges(name) == ["bytes=1000-"]
    assert server.bytes_sent[name] == len(server.files[name]) - 1000


def test_a_server_that_ignores_range_restarts_the_file(
    tmp_path: Path, server: ServerState, checksums: Path
) -> None:
    name = NAMES[0]
    server.plan(name, "ignore_range")
    dest = tmp_path / "CREMA-D"
    part = dest / "AudioWAV" / f"{name}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(server.files[name][:500])

    report = _download(dest, server, checksums)
    assert name in report.downloaded
    _assert_complete(dest, server)  # not the 500 bytes followed by the whole file
    assert server.ranges(name) == ["bytes=500-"]


def test_a_corrupted_file_is_fetched_again(tmp_path: Path, server: ServerState, checksums: Path) -> None:
    dest = tmp_path / "CREMA-D"
    _download(dest, server, checksums)
    victim = dest / "AudioWAV" / NAMES[0]
    damaged = bytearray(victim.read_bytes())
    damaged[100] ^= 0xFF
    victim.write_bytes(bytes(damaged))  # same size, wrong hash

    report = _download(dest, server, checksums)
    assert report.downloaded == (NAMES[0],)
    assert report.skipped == tuple(sorted(NAMES[1:]))
    _assert_complete(dest, server)


def test_a_complete_but_wrong_part_is_discarded(tmp_path: Path, server: ServerState, checksums: Path) -> None:
    name = NAMES[0]
    dest = tmp_path / "CREMA-D"
    part = dest / "AudioWAV" / f"{name}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\x00" * len(server.files[name]))

    report = _download(dest, server, checksums)
    assert name in report.downloaded
    _assert_complete(dest, server)
    assert server.ranges(name) == [None]


def test_wrong_bytes_are_retried(tmp_path: Path, server: ServerState, checksums: Path) -> None:
    name = NAMES[1]
    server.plan(name, "wrong", "503")
    dest = tmp_path / "CREMA-D"
    report = _download(dest, server, checksums)
    assert name in report.downloaded
    _assert_complete(dest, server)
    assert server.ranges(name) == [None, None, None]


def test_failures_are_reported_and_raise(tmp_path: Path, server: ServerState, checksums: Path) -> None:
    server.plan(NAMES[0], *["wrong"] * 10)
    server.plan(NAMES[1], "404")
    dest = tmp_path / "CREMA-D"
    with pytest.raises(CorpusError) as info:
        _download(dest, server, checksums, retries=2)
    error = info.value
    assert isinstance(error, DownloadError)
    assert error.error_type == "download_error"
    assert (
        "2 of 3 CREMA-D files could not be fetched and verified (1 downloaded, 0 already present)"
        in error.message
    )
    assert "Re-run to retry" in error.message
    report = error.report
    assert report is not None
    assert report.downloaded == (NAMES[2],)
    reasons = dict(report.failed)
    assert "sha256 mismatch" in reasons[NAMES[0]]
    assert "gave up after 3 attempts" in reasons[NAMES[0]]
    assert "HTTP 404" in reasons[NAMES[1]]
    assert len(server.ranges(NAMES[0])) == 3
    assert len(server.ranges(NAMES[1])) == 1  # permanent: not retried
    assert sorted(p.name for p in (dest / "AudioWAV").iterdir()) == [NAMES[2]]  # no bad part kept


def test_an_lfs_pointer_is_a_clear_failure(tmp_path: Path, server: ServerState, checksums: Path) -> None:
    name = NAMES[2]
    server.plan(name, "pointer")
    with pytest.raises(DownloadError) as info:
        _download(tmp_path / "CREMA-D", server, checksums)
    assert "served a Git LFS pointer file, not the audio" in info.value.message
    assert "media.githubusercontent.com/media" in info.value.message
    assert len(server.ranges(name)) == 1
    assert not (tmp_path / "CREMA-D" / "AudioWAV" / f"{name}.part").exists()


def test_an_lfs_pointer_after_a_resume_is_still_recognised(
    tmp_path: Path, server: ServerState, checksums: Path
) -> None:
    name = NAMES[2]
    server.plan(name, *["pointer"] * 5)
    part = tmp_path / "CREMA-D" / "AudioWAV" / f"{name}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 10)
    with pytest.raises(DownloadError, match="Git LFS pointer"):
        _download(tmp_path / "CREMA-D", server, checksums)
    # The 206 for the resumed range says the server's file is pointer-sized: restart, then recognise it.
    assert server.ranges(name) == ["bytes=10-", None]


def test_limit_fetches_the_first_files_only(tmp_path: Path, server: ServerState, checksums: Path) -> None:
    report = _download(tmp_path / "CREMA-D", server, checksums, limit=2)
    assert report.downloaded == NAMES[:2]
    assert {name for name, _ in server.requests} == set(NAMES[:2])


def test_download_file_reports_bytes_and_stale_parts(tmp_path: Path, server: ServerState) -> None:
    name = NAMES[0]
    body = server.files[name]
    dest = tmp_path / name
    dest.with_name(name + ".part").write_bytes(b"y" * (len(body) + 10))  # longer than the file: stale
    received: list[int] = []
    with httpx.Client() as client:
        digest = hashlib.sha256(body).hexdigest()
        url = server.url + name
        outcome = download_file(client, url, dest, digest.upper(), len(body), on_bytes=received.append)
        assert outcome == "downloaded"
        assert dest.read_bytes() == body
        assert sum(received) == len(body)
        assert (
            download_file(client, server.url + name, dest, hashlib.sha256(body).hexdigest(), len(body))
            == "skipped"
        )
    assert server.ranges(name) == [None]


@pytest.mark.parametrize(
    ("row", "match"),
    [
        (["../escape.wav", "0" * 64, "10"], "not a plain .wav file name"),
        (["a.wav", "xyz", "10"], "malformed sha256"),
        (["a.wav", "0" * 64, "-3"], "malformed size"),
    ],
)
def test_malformed_checksum_lists_are_refused(tmp_path: Path, row: list[str], match: str) -> None:
    path = tmp_path / "sums.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([["filename", "sha256", "size"], row])
    with pytest.raises(CorpusError, match=match):
        read_checksums(path)
    with pytest.raises(CorpusError, match=match):
        download_cremad(tmp_path / "dest", base_url="http://127.0.0.1:9/", checksums=path, progress=False)


def test_progress_bar_counts_bytes(
    tmp_path: Path, server: ServerState, checksums: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _download(tmp_path / "CREMA-D", server, checksums, progress=True)
    err = capsys.readouterr().err
    assert "CREMA-D AudioWAV" in err
    assert "100%" in err


def test_a_network_that_refuses_connections_ends_the_run_in_seconds(tmp_path: Path) -> None:
    import socket
    import time

    with socket.socket() as sock:  # a port nobody listens on: every connection is refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(DownloadError) as info:
        download_cremad(tmp_path / "CREMA-D", base_url=f"http://127.0.0.1:{port}/", progress=False)
    elapsed = time.monotonic() - started
    assert elapsed < 15, f"took {elapsed:.1f} s"
    message = info.value.message
    assert "download stopped after 0 of 7442 files: the server cannot be reached (ConnectError" in message
    assert "run the same command again: it resumes" in message
    assert "\n" not in message  # one line


def test_a_flaky_server_spends_the_run_budget_not_retries_times_files(
    tmp_path: Path, server: ServerState, checksums: Path
) -> None:
    from training.corpora.download import RemoteFile, RetryBudget, download_many

    for name in NAMES:
        server.plan(name, *["wrong"] * 10)
    rows = read_checksums(checksums)
    files = [RemoteFile(server.url + name, tmp_path / name, digest, size) for name, digest, size in rows]
    with pytest.raises(DownloadError, match="2 retries spent across the files"):
        download_many(
            files, workers=1, retries=3, backoff_s=0.0, progress=False, budget=RetryBudget(retries=2)
        )
    assert sum(len(server.ranges(name)) for name in NAMES) <= 4  # not 3 files x 4 attempts


def test_ravdess_is_fetched_verified_by_md5_and_unpacked(tmp_path: Path, server: ServerState) -> None:
    import zipfile

    from support import fake_ravdess

    from training.corpora import download_ravdess

    source = fake_ravdess(tmp_path / "source", actors=2)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for wav in sorted(source.glob("Actor_*/*.wav")):
            zf.write(wav, wav.relative_to(source).as_posix())
        zf.writestr("../escaped.wav", b"outside")  # a hostile member name is never extracted
        zf.writestr("Actor_01/notes.txt", b"not a clip")
    server.files["Audio_Speech_Actors_01-24.zip"] = archive = buf.getvalue()
    url = server.url + "Audio_Speech_Actors_01-24.zip"
    dest = tmp_path / "RAVDESS"
    corpus = download_ravdess(dest, url=url, md5=hashlib.md5(archive).hexdigest(), progress=False)
    assert len(corpus.utterances) == 44 and sorted(p.name for p in dest.iterdir()) == ["Actor_01", "Actor_02"]
    assert not (tmp_path / "escaped.wav").exists() and not (dest / "Actor_01" / "notes.txt").exists()
    with pytest.raises(DownloadError, match="md5 mismatch"):
        download_ravdess(tmp_path / "other", url=url, md5="0" * 32, progress=False, retries=0)
    with pytest.raises(DownloadError, match="cannot reach"):
        download_ravdess(tmp_path / "third", url="http://127.0.0.1:9/none.zip", progress=False)
