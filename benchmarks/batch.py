"""``ser predict`` over many real files: throughput of the local and the Ray engine against the backbone's
own in-process batched throughput.

    python -m benchmarks.batch --data-dir ../shared/data/ravdess16k --backbone egemaps --ray
    python -m benchmarks.batch --data-dir ../shared/data/ravdess16k --backbone large --files 96

For each backbone (``egemaps``: the built-in demo bundle; ``large``: the HuBERT-large architecture with
random weights in bf16, its bundle fitted on generated clips) the same files are

* **in-process**: decoded beforehand (not timed), then ``Predictor.embed_batch`` and ``classify`` in
  batches of ``--batch-size``, in input order: the backbone's batched throughput, nothing else;
* **local**: ``ser predict`` in a fresh process (decoding in worker processes, the model batched on one
  thread, rows written to JSONL): its closing summary's files/s and audio-hours/s (timed after the model
  is loaded);
* **ray** (``--ray``): the same command with ``--engine ray --workers N`` for each of ``--ray-workers``, on
  a local Ray instance (its start included), with the largest probability difference from the local rows.

Ratios: local / in-process (the engine's overhead: 1.0 is none), ray / local.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.measure import REPO_ROOT, machine_facts


def ravdess_files(data_dir: Path, n: int | None) -> list[Path]:
    files = sorted(data_dir.glob("Actor_*/*.flac"))
    if not files:
        raise SystemExit(f"no RAVDESS clips (Actor_NN/*.flac) under {data_dir}")
    return files[:n] if n else files


def large_bundle(work: Path) -> Path:
    from benchmarks.http import write_bundle
    from benchmarks.variants import make_model
    from shared.backbones import BackboneSpec, EncoderOptions, build_backbone

    folder = work / "hubert-large-random"
    make_model("large", folder)
    backbone = build_backbone(BackboneSpec(kind="hubert", model=str(folder)), EncoderOptions(dtype="bf16"))
    return write_bundle(backbone, work / "artifacts", "batch")


def in_process(bundle: Path, files: list[Path], batch_size: int, dtype: str) -> dict[str, Any]:
    from shared.audio import AudioLimits, load_audio
    from shared.backbones import EncoderOptions
    from shared.constants import SAMPLE_RATE
    from shared.predictor import Predictor

    predictor = Predictor.from_bundle(bundle, EncoderOptions(dtype=dtype, max_batch_size=batch_size))
    waves = [load_audio(p, AudioLimits()) for p in files]
    predictor.warmup(batch_size=min(batch_size, 2))
    started = time.perf_counter()
    for i in range(0, len(waves), batch_size):
        predictor.classify(predictor.embed_batch(waves[i : i + batch_size]))
    seconds = time.perf_counter() - started
    hours = sum(w.shape[0] for w in waves) / SAMPLE_RATE / 3600
    return {
        "seconds": round(seconds, 3),
        "files_per_s": round(len(files) / seconds, 3),
        "audio_hours_per_s": round(hours / seconds, 6),
    }


def ser_predict(
    bundle: Path, manifest: Path, work: Path, name: str, extra: list[str], env: dict[str, str]
) -> dict[str, Any]:
    out, summary = work / f"{name}.jsonl", work / f"{name}.summary.json"
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "service.cli",
            "predict",
            str(manifest),
            "--bundle",
            str(bundle),
            "--out",
            str(out),
            "--summary",
            str(summary),
            "--no-progress",
            *extra,
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise RuntimeError(f"ser predict {name} failed ({done.returncode}): {done.stderr[-3000:]}")
    result = json.loads(summary.read_text())
    return {
        **{k: result[k] for k in ("seconds", "files_per_s", "audio_hours_per_s", "ok", "failed")},
        "process_wall_s": round(wall, 1),
    }


def run_backbone(kind: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from shared.demo import DEMO_ROOT

    files = ravdess_files(args.data_dir, args.files or (None if kind == "egemaps" else 96))
    manifest = work / f"{kind}.csv"
    manifest.write_text("path\n" + "".join(f"{p.resolve()}\n" for p in files))
    dtype = "fp32" if kind == "egemaps" else "bf16"
    bundle = DEMO_ROOT if kind == "egemaps" else large_bundle(work)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "SER_DTYPE": dtype,
        "SER_MAX_BATCH_SIZE": str(args.batch_size),
        "SER_CACHE_DIR": str(work / "cache"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    result: dict[str, Any] = {
        "backbone": kind,
        "dtype": dtype,
        "files": len(files),
        "batch_size": args.batch_size,
    }
    result["in_process"] = in_process(Path(bundle), files, args.batch_size, dtype)
    print(f"{kind} in-process: {result['in_process']['files_per_s']:.2f} files/s", flush=True)
    result["local"] = ser_predict(Path(bundle), manifest, work, f"{kind}-local", [], env)
    result["local_over_in_process"] = round(
        result["local"]["files_per_s"] / result["in_process"]["files_per_s"], 3
    )
    print(
        f"{kind} local: {result['local']['files_per_s']:.2f} files/s ({result['local_over_in_process']:.3f} of in-process)",
        flush=True,
    )
    local_rows = _rows(work / f"{kind}-local.jsonl")
    for workers in args.ray_workers if args.ray else []:
        name = f"ray_{workers}_workers"
        run = ser_predict(
            Path(bundle),
            manifest,
            work,
            f"{kind}-{name}",
            ["--engine", "ray", "--workers", str(workers)],
            env,
        )
        ray_rows = _rows(work / f"{kind}-{name}.jsonl")
        run["over_local"] = round(run["files_per_s"] / result["local"]["files_per_s"], 3)
        run["same_labels"] = all(ray_rows[p]["label"] == r["label"] for p, r in local_rows.items())
        run["max_probability_difference"] = max(
            abs((ray_rows[p][c] or 0) - (r[c] or 0))
            for p, r in local_rows.items()
            for c in r
            if c.startswith("p_")
        )
        run["cpus_per_worker"] = args.ray_cpus_per_worker
        result[name] = run
        print(
            f"{kind} ray, {workers} workers: {run['files_per_s']:.2f} files/s ({run['over_local']:.3f} of local)",
            flush=True,
        )
    return result


def _rows(path: Path) -> dict[str, dict[str, Any]]:
    return {row["path"]: row for row in map(json.loads, path.read_text().splitlines())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, type=Path, help="the RAVDESS folder (Actor_NN/*.flac)")
    parser.add_argument("--backbone", action="append", choices=("egemaps", "large"), help="default: both")
    parser.add_argument(
        "--files", type=int, default=None, help="the first N files (default: all for egemaps, 96 for large)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--ray", action="store_true", help="also the Ray engine on a local instance")
    parser.add_argument(
        "--ray-workers", type=lambda t: [int(x) for x in t.split(",")], default=[1, 2], help="replica counts"
    )
    parser.add_argument("--ray-cpus-per-worker", type=float, default=1.0, help="CPUs each replica holds")
    parser.add_argument("--out", type=Path, help="write the JSON here")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ser-batch-bench-"))
    runs = [run_backbone(kind, args, work) for kind in args.backbone or ("egemaps", "large")]
    text = json.dumps({"benchmark": "batch", "runs": runs, "machine": machine_facts()}, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
