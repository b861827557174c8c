"""The Ray engine: the rows of the local engine from a local Ray instance, and every file exactly once
when a node of a two-node cluster dies during the run (Ray's own ``cluster_utils`` on this machine)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from service.cli import main as ser
from shared.audio import AudioLimits
from shared.backbones import EncoderOptions
from shared.batch.output import RowOutput
from shared.batch.pipeline import Decoder, PredictionModel
from shared.batch.rows import PREDICTION_COLUMNS, PROBABILITY_COLUMNS
from tests.shared.test_batch import write_clips
from tests.support import real_data_dir

ray = pytest.importorskip("ray", reason="the Ray engine needs the ray extra: pip install -e '.[ray]'")


def by_path(path: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == len({r["path"] for r in rows})
    return {r["path"]: r for r in rows}


def assert_same_rows(local: dict[str, dict], other: dict[str, dict]) -> None:
    assert local.keys() == other.keys()
    for path, want in local.items():
        got = other[path]
        for column in PREDICTION_COLUMNS:
            if column in PROBABILITY_COLUMNS or column in ("confidence", "duration_s"):
                assert (got[column] is None) == (want[column] is None), (path, column)
                if want[column] is not None:
                    assert abs(got[column] - want[column]) <= 1e-6, (path, column)
            else:
                assert got[column] == want[column], (path, column)


def broken_files(folder: Path) -> None:
    (folder / "empty.wav").write_bytes(b"")
    (folder / "text.flac").write_text("these are notes, not audio")
    (folder / "cut.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt ")


def test_a_local_ray_instance_gives_the_local_engine_rows(
    tmp_path: Path, egemaps_bundle: Path, capsys
) -> None:
    folder = tmp_path / "archive"
    write_clips(folder, 24, seconds=2.0)
    broken_files(folder)
    common = [str(folder), "--bundle", str(egemaps_bundle), "--no-progress"]
    assert ser(["predict", *common, "--out", str(tmp_path / "local.jsonl")]) == 1
    assert (
        ser(["predict", *common, "--out", str(tmp_path / "ray.jsonl"), "--engine", "ray", "--workers", "2"])
        == 1
    )
    err = capsys.readouterr().err
    assert err.count("27 files in") == 2 and err.count("24 ok, 3 failed") == 2
    local, on_ray = by_path(tmp_path / "local.jsonl"), by_path(tmp_path / "ray.jsonl")
    assert_same_rows(local, on_ray)
    assert {Path(p).name: r["error_type"] for p, r in on_ray.items() if not r["ok"]} == {
        "empty.wav": "audio_decode_error",
        "text.flac": "unsupported_format",
        "cut.wav": "audio_decode_error",
    }


@pytest.mark.slow
@pytest.mark.realdata
def test_all_of_ravdess_gives_the_same_rows_locally_and_on_ray(tmp_path: Path) -> None:
    data = real_data_dir()
    assert data is not None
    inputs = [str(data / "ravdess16k"), str(tmp_path / "broken"), "--recursive", "--no-progress"]
    (tmp_path / "broken").mkdir()
    broken_files(tmp_path / "broken")
    assert ser(["predict", *inputs, "--out", str(tmp_path / "local.jsonl")]) == 1
    assert (
        ser(["predict", *inputs, "--out", str(tmp_path / "ray.jsonl"), "--engine", "ray", "--workers", "2"])
        == 1
    )
    local = by_path(tmp_path / "local.jsonl")
    assert len(local) == 1056 + 3
    assert_same_rows(local, by_path(tmp_path / "ray.jsonl"))


def test_every_file_once_when_a_node_dies_during_the_run(tmp_path: Path, egemaps_bundle: Path) -> None:
    from ray.cluster_utils import Cluster

    from shared.batch.ray_engine import RaySettings, run_ray

    paths = [str(p) for p in write_clips(tmp_path / "clips", 160, seconds=3.0)]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3})
    doomed = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    out = RowOutput(tmp_path / "rows.jsonl", PREDICTION_COLUMNS)
    arrived: list[str] = []
    killed = threading.Event()

    def collect(results: list) -> None:
        arrived.extend(rows[0]["path"] for rows in results)
        out.add(results)
        if len(arrived) >= 16 and not killed.is_set():
            killed.set()
            cluster.remove_node(doomed, allow_graceful=False)

    try:
        model = PredictionModel(egemaps_bundle, EncoderOptions())
        run_ray(paths, Decoder(AudioLimits()), model, collect, RaySettings(workers=3), batch_size=4)
    finally:
        out.close()
        ray.shutdown()
        cluster.shutdown()
    assert killed.is_set() and len(arrived) >= len(paths)  # a file retried may arrive twice
    rows = by_path(tmp_path / "rows.jsonl")  # and is written once
    assert sorted(rows) == sorted(paths) and all(r["ok"] for r in rows.values())
