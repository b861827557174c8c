"""Batch runs: which files the inputs mean, output files that survive interruption and resume, and the
local engine (decoding in worker processes) giving the rows the model gives one file at a time."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from shared.audio import AudioLimits
from shared.backbones import EncoderOptions
from shared.batch.inputs import InputError, collect_inputs, read_manifest
from shared.batch.output import RowOutput
from shared.batch.pipeline import Decoder, PredictionModel, run_local
from shared.batch.rows import PREDICTION_COLUMNS, PROBABILITY_COLUMNS, empty_row
from tests.support import synthetic_clip, wav_bytes

LABELS = ("neutral", "happy", "sad", "angry", "fear", "disgust")


def write_clips(folder: Path, n: int, seconds: float = 1.5) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"clip{i:03d}.wav"
        path.write_bytes(wav_bytes(synthetic_clip(LABELS[i % 6], seconds, seed=i)))
        paths.append(path)
    return paths


def test_folders_globs_and_manifests_name_the_files_once_in_order(tmp_path: Path) -> None:
    write_clips(tmp_path / "a", 2)
    write_clips(tmp_path / "a" / "deeper", 1)
    (tmp_path / "a" / "notes.txt").write_text("not audio")
    (tmp_path / "a" / "LOUD.FLAC").write_bytes(b"fLaC")
    top = collect_inputs([tmp_path / "a"])
    assert [Path(p).name for p in top] == ["LOUD.FLAC", "clip000.wav", "clip001.wav"]
    assert len(collect_inputs([tmp_path / "a"], recursive=True)) == 4
    assert collect_inputs([tmp_path / "a"], extensions=(".flac",)) == [str(tmp_path / "a" / "LOUD.FLAC")]
    globbed = collect_inputs([str(tmp_path / "a" / "**" / "*.wav"), str(tmp_path / "a" / "clip000.wav")])
    a = tmp_path / "a"
    assert globbed == [str(a / "clip000.wav"), str(a / "clip001.wav"), str(a / "deeper" / "clip000.wav")]
    # a named file that is missing or not audio is kept: it gets an error row, not silence
    assert collect_inputs(["missing.wav", tmp_path / "a" / "notes.txt"]) == [
        "missing.wav",
        str(tmp_path / "a" / "notes.txt"),
    ]
    manifest = tmp_path / "list.csv"
    manifest.write_text("speaker,path\nx,a/clip001.wav\ny,/abs/elsewhere.wav\n")
    assert read_manifest(manifest) == [str(tmp_path / "a" / "clip001.wav"), "/abs/elsewhere.wav"]
    lines = tmp_path / "list.jsonl"
    lines.write_text(json.dumps({"file": "a/clip000.wav"}) + "\n\n")
    assert collect_inputs([lines], path_column="file") == [str(tmp_path / "a" / "clip000.wav")]


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ("speaker,file\nx,a.wav\n", ".csv", "has no 'path' column (its columns: speaker, file)"),
        ('{"file": "a.wav"}\n', ".jsonl", "line 1 of the manifest"),
        ("path\n", ".csv", "lists no files"),
        ("{not json\n", ".jsonl", "cannot read the manifest"),
    ],
)
def test_a_manifest_without_paths_is_a_usage_error(
    tmp_path: Path, content: str, suffix: str, message: str
) -> None:
    manifest = tmp_path / f"m{suffix}"
    manifest.write_text(content)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        collect_inputs([manifest])


def test_an_empty_glob_or_folder_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no audio files match"):
        collect_inputs([str(tmp_path / "*.wav")])
    (tmp_path / "sub").mkdir()
    write_clips(tmp_path / "sub" / "deeper", 1)
    with pytest.raises(InputError, match="--recursive looks in sub-folders"):
        collect_inputs([tmp_path / "sub"])


def row(path: str, digest: str = "d", **values) -> list[dict]:
    return [
        empty_row(PREDICTION_COLUMNS, path=path, sha256=digest, ok=True, label="sad", p_sad=0.5, **values)
    ]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_an_output_resumes_and_never_holds_a_file_twice(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"out{suffix}"
    with RowOutput(path, PREDICTION_COLUMNS, flush_seconds=0) as out:
        assert len(out.add([row("a.wav"), row("b.wav"), row("a.wav")])) == 2  # a repeat is dropped
        assert out.add([row("a.wav")]) == []
    again = RowOutput(path, PREDICTION_COLUMNS)
    assert again.holds("a.wav", "d") and again.holds("b.wav", "d") and not again.holds("a.wav", "changed")
    added = again.add([row("b.wav"), row("a.wav", "changed"), row("c.wav")])  # new contents: a new row
    assert [r[0]["path"] for r in added] == ["a.wav", "c.wav"]
    again.close()
    if suffix == ".parquet":
        table = pq.read_table(path)
        assert table.schema.names == list(PREDICTION_COLUMNS) and table.num_rows == 4
        assert table.column("p_sad").to_pylist() == [0.5] * 4
    elif suffix == ".csv":
        with path.open() as fh:
            rows = list(csv.DictReader(fh))
        assert [r["path"] for r in rows] == ["a.wav", "b.wav", "a.wav", "c.wav"]
    else:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert [r["path"] for r in rows] == ["a.wav", "b.wav", "a.wav", "c.wav"]
        assert list(rows[0]) == list(PREDICTION_COLUMNS) and rows[0]["label"] == "sad"


def test_a_parquet_output_is_a_whole_file_after_every_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    out = RowOutput(path, PREDICTION_COLUMNS, flush_seconds=0)
    for i in range(3):
        out.add([row(f"{i}.wav")])
        assert 1 <= pq.read_table(path).num_rows <= i + 1  # readable while the run goes on
    out.flush()
    assert pq.read_table(path).num_rows == 3
    out.close()
    assert not [p for p in tmp_path.iterdir() if p.name != "out.parquet"]  # no temporary left


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_line_cut_short_by_a_killed_run_is_dropped_on_resume(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"out{suffix}"
    with RowOutput(path, PREDICTION_COLUMNS) as out:
        out.add([row("a.wav")])
    with path.open("a") as fh:
        fh.write('{"path": "b.wav", "sha2' if suffix == ".jsonl" else "b.wav,d,Tr")
    out = RowOutput(path, PREDICTION_COLUMNS)
    assert set(out.done) == {"a.wav"}
    out.add([row("b.wav")])
    out.close()
    text = path.read_text().splitlines()
    assert len(text) == (2 if suffix == ".jsonl" else 3) and "b.wav" in text[-1]


def test_an_output_it_cannot_use_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="the output folder .*missing does not exist"):
        RowOutput(tmp_path / "missing" / "out.jsonl", PREDICTION_COLUMNS)
    with pytest.raises(InputError, match="cannot tell the format"):
        RowOutput(tmp_path / "out.txt", PREDICTION_COLUMNS)
    other = tmp_path / "other.csv"
    other.write_text("path,window,label\na.wav,0,sad\n")
    with pytest.raises(InputError, match="columns differ"):
        RowOutput(other, PREDICTION_COLUMNS)
    junk = tmp_path / "junk.jsonl"
    junk.write_text("hello\n")
    with pytest.raises(InputError, match="line 1 is not one of its rows"):
        RowOutput(junk, PREDICTION_COLUMNS)


def test_the_local_engine_gives_the_rows_of_one_file_at_a_time(tmp_path: Path, egemaps_bundle: Path) -> None:
    paths = [str(p) for p in write_clips(tmp_path, 9)]
    (tmp_path / "bad.wav").write_text("not audio")
    (tmp_path / "short.wav").write_bytes(wav_bytes(synthetic_clip("sad", 0.2)))
    paths[3:3] = [str(tmp_path / "bad.wav"), str(tmp_path / "missing.wav"), str(tmp_path / "short.wav")]
    decoder = Decoder(AudioLimits())
    model = PredictionModel(egemaps_bundle, EncoderOptions())
    pooled: list = []
    run_local(paths, decoder, model, pooled.extend, batch_size=4, workers=1)
    alone = [model.rows([decoder(p)])[0] for p in paths]
    assert [r[0]["path"] for r in pooled] == paths  # input order
    for got, want in zip(pooled, alone, strict=True):
        assert got[0].keys() == want[0].keys()
        for column in PROBABILITY_COLUMNS:
            assert got[0][column] == pytest.approx(want[0][column], abs=1e-9) if want[0]["ok"] else True
        assert (got[0]["ok"], got[0]["label"], got[0]["error_type"]) == (
            want[0]["ok"],
            want[0]["label"],
            want[0]["error_type"],
        )
    failures = {Path(r[0]["path"]).name: r[0] for r in pooled if not r[0]["ok"]}
    assert {k: v["error_type"] for k, v in failures.items()} == {
        "bad.wav": "unsupported_format",
        "missing.wav": "file_not_found",
        "short.wav": "audio_too_short",
    }
    assert failures["bad.wav"]["sha256"] and failures["missing.wav"]["sha256"] == ""
    assert "accepted:" in failures["bad.wav"]["error"] and failures["bad.wav"]["bundle"] == "synthetic"
    ok = [r[0] for r in pooled if r[0]["ok"]]
    assert all(abs(sum(r[c] for c in PROBABILITY_COLUMNS) - 1) < 1e-6 for r in ok)
    assert all(r["duration_s"] == pytest.approx(1.5) for r in ok) and model.predicted == 2 * 9


def test_a_batch_of_hubert_inputs_gives_each_file_its_own_result(tmp_path: Path, hubert_bundle: Path) -> None:
    """Padded batches of unequal lengths give what each file gives alone."""
    paths = [str(p) for p in write_clips(tmp_path / "a", 3, 1.0) + write_clips(tmp_path / "b", 2, 2.5)]
    decoder = Decoder(AudioLimits())
    model = PredictionModel(hubert_bundle, EncoderOptions())
    together: list = []
    run_local(paths, decoder, model, together.extend, batch_size=5, workers=0)
    for path, rows in zip(paths, together, strict=True):
        alone = model.rows([decoder(path)])[0][0]
        got = np.array([rows[0][c] for c in PROBABILITY_COLUMNS])
        want = np.array([alone[c] for c in PROBABILITY_COLUMNS])
        assert np.abs(got - want).max() < 1e-4 and rows[0]["label"] == alone["label"]
