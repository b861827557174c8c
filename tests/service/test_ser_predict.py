"""``ser predict`` over many files: outputs in three formats, resuming after Ctrl-C or a killed process
without predicting a file twice, timelines as rows, and usage errors before any work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from service.cli import main as ser
from shared.batch.rows import PREDICTION_COLUMNS, TIMELINE_COLUMNS
from tests.shared.test_batch import write_clips

REPO = Path(__file__).resolve().parents[2]


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _default_interrupts() -> None:
    # a shell's background job ignores SIGINT, and a Python started so never turns it into Ctrl-C
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_ser(args: list[str], tmp_path: Path, log: Path) -> subprocess.Popen:
    with log.open("w") as sink:  # a file, not a pipe: the test never waits on a pipe's other end
        return subprocess.Popen(
            [sys.executable, "-m", "service.cli", *args],
            preexec_fn=_default_interrupts,
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )


def test_one_folder_to_three_formats_with_the_same_rows(tmp_path: Path, egemaps_bundle: Path, capsys) -> None:
    clips = write_clips(tmp_path / "calls", 7)
    (tmp_path / "calls" / "broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunk")
    outputs = {}
    for suffix in ("jsonl", "csv", "parquet"):
        out = tmp_path / f"rows.{suffix}"
        code = ser(["predict", str(tmp_path / "calls"), "--out", str(out), "--bundle", str(egemaps_bundle)])
        assert code == 1  # one file failed; it has its row
        outputs[suffix] = pq.read_table(out).to_pylist() if suffix == "parquet" else None
    err = capsys.readouterr().err
    assert "8 files in" in err and "7 ok, 1 failed (audio_decode_error 1)" in err
    rows = jsonl(tmp_path / "rows.jsonl")
    assert [r["path"] for r in rows] == sorted(str(p) for p in [*clips, tmp_path / "calls" / "broken.wav"])
    assert [list(r) for r in rows] == [list(PREDICTION_COLUMNS)] * 8
    broken = next(r for r in rows if not r["ok"])
    assert broken["label"] is None and broken["error_type"] == "audio_decode_error" and broken["sha256"]
    assert rows == outputs["parquet"]
    csv_lines = (tmp_path / "rows.csv").read_text().splitlines()
    assert csv_lines[0] == ",".join(PREDICTION_COLUMNS) and len(csv_lines) == 9
    # the same command again: every file is already there
    assert (
        ser(
            [
                "predict",
                str(tmp_path / "calls"),
                "--out",
                str(tmp_path / "rows.jsonl"),
                "--bundle",
                str(egemaps_bundle),
            ]
        )
        == 0
    )
    assert "0 files in" in capsys.readouterr().err and len(jsonl(tmp_path / "rows.jsonl")) == 8


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def run_until_rows(
    args: list[str], tmp_path: Path, out: Path, rows: int, sig: int
) -> subprocess.CompletedProcess:
    log = tmp_path / f"ser-{sig}.log"
    proc = start_ser(args, tmp_path, log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.is_file() and len(out.read_text().splitlines()) >= rows:
            helpers = children(proc.pid)
            proc.send_signal(sig)
            break
        time.sleep(0.02)
    proc.wait(timeout=120)
    # its decoding processes end with it, however it ended
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{c}").exists() for c in helpers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert helpers and not [
        c
        for c in helpers
        if Path(f"/proc/{c}/status").exists() and "zombie" not in Path(f"/proc/{c}/status").read_text()
    ]
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", log.read_text())


def test_an_interrupted_run_resumes_without_predicting_a_file_twice(
    tmp_path: Path, egemaps_bundle: Path
) -> None:
    n = 48
    write_clips(tmp_path / "many", n, seconds=3.0)
    out = tmp_path / "out.jsonl"
    base = ["predict", "many", "--out", str(out), "--bundle", str(egemaps_bundle), "--batch-size", "2"]
    first = run_until_rows([*base, "--summary", "s1.json"], tmp_path, out, 10, signal.SIGINT)
    assert first.returncode == 130, first.stderr[-2000:]
    s1 = json.loads((tmp_path / "s1.json").read_text())
    done = len(jsonl(out))
    assert s1["interrupted"] and s1["predicted"] == done and 10 <= done < n
    assert "interrupted" in first.stderr and "re-run the same command" in first.stderr
    # killed outright: the file still holds whole rows only
    second = run_until_rows(base, tmp_path, out, done + 6, signal.SIGKILL)
    assert second.returncode == -signal.SIGKILL
    done = len(jsonl(out))
    assert done < n
    third = subprocess.run(
        [sys.executable, "-m", "service.cli", *base, "--summary", "s3.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert third.returncode == 0, third.stderr[-2000:]
    s3 = json.loads((tmp_path / "s3.json").read_text())
    assert s3["skipped"] == done and s3["predicted"] == n - done  # only the rest was predicted
    paths = [r["path"] for r in jsonl(out)]
    assert len(paths) == n and len(set(paths)) == n


def test_a_changed_file_is_predicted_again(tmp_path: Path, egemaps_bundle: Path, capsys) -> None:
    clip = write_clips(tmp_path, 1)[0]
    out = tmp_path / "out.csv"
    args = ["predict", str(clip), "--out", str(out), "--bundle", str(egemaps_bundle)]
    assert ser(args) == 0
    write_clips(tmp_path / "other", 2)[1].replace(clip)
    assert ser(args) == 0
    assert len(out.read_text().splitlines()) == 3 and "1 files in" in capsys.readouterr().err.splitlines()[-1]


def test_session_rows_come_from_the_session_classifier(tmp_path: Path, egemaps_bundle: Path) -> None:
    write_clips(tmp_path / "one", 12)
    out = tmp_path / "s.jsonl"
    assert (
        ser(
            [
                "predict",
                str(tmp_path / "one"),
                "--session",
                "--out",
                str(out),
                "--bundle",
                str(egemaps_bundle),
            ]
        )
        == 0
    )
    rows = jsonl(out)
    assert len(rows) == 12 and {r["classifier"] for r in rows} == {"session"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "{tmp}/missing/out.jsonl"], "the output folder {tmp}/missing does not exist"),
        (["--out", "{tmp}/out.txt"], "cannot tell the format"),
        (["--engine", "ray", "--ray-address", "127.0.0.1:9"], "cannot reach the Ray cluster at 127.0.0.1:9"),
        (["--engine", "ray", "--ray-address", "nowhere"], "is not HOST:PORT"),
        (["--session", "--timeline"], "--session works with the local engine"),
        (["--format", "csv"], "--format applies to --out"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2_before_any_work(
    tmp_path: Path, egemaps_bundle: Path, capsys, args: list[str], message: str
) -> None:
    clip = write_clips(tmp_path, 1)[0]
    started = time.monotonic()
    code = ser(
        ["predict", str(clip), "--bundle", str(egemaps_bundle), *[a.format(tmp=tmp_path) for a in args]]
    )
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    lines = captured.err.strip().splitlines()
    assert (
        len(lines) == 1
        and lines[0].startswith("ser predict: error: ")
        and message.format(tmp=tmp_path) in lines[0]
    )
    assert time.monotonic() - started < 10
    assert [p.name for p in tmp_path.iterdir()] == [clip.name]


def test_a_manifest_without_its_column_is_a_usage_error(tmp_path: Path, egemaps_bundle: Path, capsys) -> None:
    manifest = tmp_path / "calls.csv"
    manifest.write_text("file,agent\na.wav,x\n")
    assert ser(["predict", str(manifest), "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"ser predict: error: the manifest {manifest} has no 'path' column (its columns: file, agent); "
        "name the column with --path-column"
    )
    manifest.write_text("file,agent\n" + "".join(f"{p},x\n" for p in write_clips(tmp_path / "c", 2)))
    assert (
        ser(
            [
                "predict",
                str(manifest),
                "--path-column",
                "file",
                "--out",
                str(tmp_path / "o.jsonl"),
                "--bundle",
                str(egemaps_bundle),
            ]
        )
        == 0
    )
    assert len(jsonl(tmp_path / "o.jsonl")) == 2


@pytest.mark.realdata
def test_timeline_rows_are_the_windows_of_ser_timeline(
    tmp_path: Path, timeline_bundle: Path, ravdess_recording, capsys
) -> None:
    recording, _truth, _clips = ravdess_recording
    out = tmp_path / "windows.parquet"
    args = ["--bundle", str(timeline_bundle)]
    assert ser(["predict", str(recording), "--timeline", "--out", str(out), *args]) == 0
    assert ser(["timeline", str(recording), "--format", "json", *args]) == 0
    timeline = json.loads(capsys.readouterr().out)
    rows = pq.read_table(out).to_pylist()
    assert list(rows[0]) == list(TIMELINE_COLUMNS) and len(rows) == len(timeline["windows"]) > 20
    for r, w in zip(rows, timeline["windows"], strict=True):
        assert (round(r["start_s"], 3), round(r["end_s"], 3), r["label"]) == (
            w["start"],
            w["end"],
            w["label"],
        )
        assert r["duration_s"] == pytest.approx(timeline["summary"]["duration_s"], abs=1e-3)
