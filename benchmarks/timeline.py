"""Long recordings: how well timelines follow real emotions, how the two embedding methods agree, and
what a long recording costs.

    python -m benchmarks.timeline accuracy --data-dir ../shared/data/ravdess16k
    python -m benchmarks.timeline agreement --data-dir ../shared/data/ravdess16k --model large
    python -m benchmarks.timeline cost --data-dir ../shared/data/ravdess16k --minutes 10,60
    python -m benchmarks.timeline vad --data-dir ../shared/data/ravdess16k

**accuracy** (eGeMAPS): a bundle is fitted on RAVDESS actors 1-16. Window lengths are chosen on a
development recording of actors 17-20 (clips with 0.1-0.4 s gaps, so that speech regions hold several
utterances and the window length matters); the figures reported are from held-out recordings of actors
21-24 (20+ clips, 0.5-2 s pauses): speech coverage of each clip, segments starting inside a pause, the
majority window label against each clip's own prediction, per-clip accuracy and the emotion diarization
error rate (EDER = 1 - correctly labelled time / total time) against the true labels.

**agreement** (a HuBERT architecture, random weights unless ``--model`` names a checkpoint folder): the
``pooled`` method (one encoder pass per speech region) against ``exact`` (every window encoded on its
own) on a held-out recording: same top label, probability difference, embedding difference, time.

**cost** (HuBERT-large architecture, bf16): recordings of ``--minutes`` (about 70% speech) sent through
the jobs API of a real server, one fresh server process per recording: wall time, real-time factor and
the server's peak memory.

Each command prints a summary and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.measure import REPO_ROOT, machine_facts, read_proc_status
from benchmarks.recordings import (
    ClipRef,
    TruthSpan,
    build_recording,
    labelled_time,
    loop_to_length,
    pick_clips,
    ravdess_clips,
)
from shared.audio import decode_audio
from shared.backbones import BackboneSpec
from shared.bundle import load_bundle
from shared.constants import SAMPLE_RATE
from shared.predictor import Predictor
from shared.timeline import Timeline, TimelineAnalyzer, TimelineOptions

TRAIN_ACTORS = range(1, 17)
DEV_ACTORS = range(17, 21)
TEST_ACTORS = range(21, 25)


def write_flac(wave: np.ndarray, path: Path) -> Path:
    import soundfile as sf

    sf.write(path, wave, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return path


def fit_on_actors(data_dir: Path, backbone: Any, actors: Sequence[int], artifacts: Path, name: str) -> Path:
    """A bundle fitted on the RAVDESS clips of ``actors`` (with its session classifier)."""
    from training.recipe import fit_bundle

    clips = ravdess_clips(data_dir, actors)
    x = backbone.embed_batch([decode_audio(c.path) for c in clips])
    return fit_bundle(
        x,
        [c.emotion for c in clips],
        backbone,
        artifacts,
        name=name,
        version="benchmark",
        training={"corpus": "ravdess", "actors": list(actors), "n_utterances": len(clips)},
        speakers=[c.speaker for c in clips],
    )


def score(
    timeline: Timeline, truth: Sequence[TruthSpan], predictor: Predictor, clips: Sequence[ClipRef]
) -> dict[str, Any]:
    """A timeline against the truth of its recording."""
    coverage = []
    for t in truth:
        covered = sum(max(0.0, min(t.end, r.end) - max(t.start, r.start)) for r in timeline.regions)
        coverage.append(covered / (t.end - t.start))
    pauses = [(a.end, b.start) for a, b in zip(truth, truth[1:], strict=False)]
    early = [
        b - r.start for r in timeline.regions for a, b in pauses if a < r.start < b and b - r.start > 0.3
    ]
    # each clip's own prediction, from its original file, as POST /v1/predict computes it
    own = predictor.predict_batch([decode_audio(c.path) for c in clips])
    agree, majority_correct = [], []
    for t, p in zip(truth, own, strict=True):
        inside = [w.label for w in timeline.windows if t.start <= (w.start + w.end) / 2 < t.end]
        majority = collections.Counter(inside).most_common(1)[0][0] if inside else None
        agree.append(majority == p.label)
        majority_correct.append(majority == t.emotion)
    time_scores = labelled_time(truth, [(s.start, s.end, s.label) for s in timeline.segments])
    return {
        "clips": len(truth),
        "recording_s": round(timeline.summary.duration_s, 2),
        "speech_s": round(timeline.summary.speech_s, 2),
        "clips_covered_80pct": round(float(np.mean(np.array(coverage) >= 0.8)), 3),
        "mean_coverage": round(float(np.mean(coverage)), 3),
        "segments_starting_over_0.3s_into_a_pause": len(early),
        "majority_window_equals_clip_prediction": round(float(np.mean(agree)), 3),
        "per_clip_accuracy": round(
            float(np.mean([p.label == t.emotion for t, p in zip(truth, own, strict=True)])), 3
        ),
        "majority_window_accuracy": round(float(np.mean(majority_correct)), 3),
        "classifier": timeline.classifier,
        "segments": len(timeline.segments),
        **time_scores,
    }


#: The demo bundle's input normalisation: level to -26 dBFS, leading and trailing silence trimmed.
EGEMAPS_SPEC = BackboneSpec(kind="egemaps", level_dbfs=-26.0, trim_silence=True)


def accuracy(args: argparse.Namespace) -> dict[str, Any]:
    from shared.backbones import build_backbone

    data_dir = Path(args.data_dir)
    work = Path(tempfile.mkdtemp(prefix="ser-timeline-bench-"))
    backbone = build_backbone(EGEMAPS_SPEC)
    bundle = fit_on_actors(data_dir, backbone, TRAIN_ACTORS, work / "artifacts", "timeline-egemaps")
    predictor = Predictor(load_bundle(bundle), backbone)
    # development: gaps short enough that regions hold several utterances, so the window length matters
    dev_clips = pick_clips(ravdess_clips(data_dir, DEV_ACTORS), 60, seed=11)
    dev_wave, dev_truth = build_recording(dev_clips, pause_range=(0.1, 0.4), seed=11)
    dev_path = write_flac(dev_wave, work / "dev.flac")
    sweep = []
    for window in args.windows:
        options = TimelineOptions(window_seconds=window, hop_seconds=min(1.0, window / 2))
        timeline = TimelineAnalyzer(predictor, options).analyse(dev_path)
        row = {
            "window_s": window,
            "hop_s": options.hop_seconds,
            **score(timeline, dev_truth, predictor, dev_clips),
        }
        sweep.append(row)
        print(
            f"dev  window {window:>4} s: EDER {row['eder']:.3f}  majority accuracy {row['majority_window_accuracy']:.3f}"
        )
    variants = {
        "default": (TimelineOptions(), True),
        "single": (TimelineOptions(session=False), True),
        "single_off_grid": (TimelineOptions(session=False), False),
    }
    held_out = []
    for seed in range(args.recordings):
        clips = pick_clips(ravdess_clips(data_dir, TEST_ACTORS), args.clips, seed=100 + seed)
        scores: dict[str, Any] = {"seed": 100 + seed}
        for name, (options, on_grid) in variants.items():
            wave, truth = build_recording(clips, seed=100 + seed, on_grid=on_grid)
            path = write_flac(wave, work / f"test-{seed}-{name}.flac")
            scores[name] = score(TimelineAnalyzer(predictor, options).analyse(path), truth, predictor, clips)
        held_out.append(scores)
        d, single = scores["default"], scores["single"]
        print(
            f"test recording {seed}: {d['clips']} clips, {d['recording_s']:.0f} s; covered {d['clips_covered_80pct']:.2f}, "
            f"early starts {d['segments_starting_over_0.3s_into_a_pause']}, majority = own prediction "
            f"{single['majority_window_equals_clip_prediction']:.2f} (single) / "
            f"{scores['single_off_grid']['majority_window_equals_clip_prediction']:.2f} (off the 10 ms grid), "
            f"per-clip accuracy {d['per_clip_accuracy']:.2f}, EDER {d['eder']:.3f} (session) / {single['eder']:.3f} (single)"
        )
    # how much eGeMAPS depends on where its 10 ms frames fall: the same clips, 5 ms later
    phase_clips = ravdess_clips(data_dir, TEST_ACTORS)[::3]
    waves = [decode_audio(c.path) for c in phase_clips]
    before = predictor.predict_batch(waves)
    after = predictor.predict_batch([w[SAMPLE_RATE // 200 :] for w in waves])
    phase = {
        "clips": len(waves),
        "same_label_after_a_5ms_shift": round(
            float(np.mean([a.label == b.label for a, b in zip(before, after, strict=True)])), 3
        ),
    }
    print(
        f"a 5 ms shift keeps the label of {phase['same_label_after_a_5ms_shift']:.0%} of {len(waves)} held-out clips"
    )
    return {
        "benchmark": "timeline-accuracy",
        "frame_phase": phase,
        "backbone": EGEMAPS_SPEC.to_dict(),
        "train_actors": list(TRAIN_ACTORS),
        "dev_actors": list(DEV_ACTORS),
        "test_actors": list(TEST_ACTORS),
        "defaults": TimelineOptions().to_dict(),
        "dev_sweep": sweep,
        "dev_best_window_s": min(sweep, key=lambda r: r["eder"])["window_s"],
        "held_out": held_out,
        "held_out_mean": {name: _means([r[name] for r in held_out]) for name in variants},
        "machine": machine_facts(),
    }


def _means(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    keys = [k for k, v in rows[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return {k: round(float(np.mean([r[k] for r in rows])), 4) for k in keys}


def agreement(args: argparse.Namespace) -> dict[str, Any]:
    """pooled against exact on a held-out recording, with a HuBERT bundle fitted on actors 1-4."""
    from benchmarks.variants import make_model
    from shared.backbones import EncoderOptions, build_backbone
    from shared.bundle import load_bundle

    data_dir = Path(args.data_dir)
    work = Path(tempfile.mkdtemp(prefix="ser-timeline-agree-"))
    folder = Path(args.model) if Path(args.model).is_dir() else work / "model"
    if not folder.is_dir():
        make_model(args.model, folder)
    options = EncoderOptions(dtype=args.dtype)
    backbone = build_backbone(BackboneSpec(kind="hubert", model=str(folder)), options)
    started = time.perf_counter()
    bundle = fit_on_actors(
        data_dir, backbone, range(1, 1 + args.train_actors), work / "artifacts", "timeline-hubert"
    )
    fit_s = time.perf_counter() - started
    predictor = Predictor(load_bundle(bundle), backbone)
    clips = pick_clips(ravdess_clips(data_dir, TEST_ACTORS), args.clips, seed=200)
    wave, truth = build_recording(clips, pause_range=(0.1, 0.4), seed=200)
    path = write_flac(wave, work / "agreement.flac")
    results: dict[str, Any] = {}
    timelines: dict[str, Timeline] = {}
    for method in ("pooled", "exact"):
        analyzer = TimelineAnalyzer(predictor, TimelineOptions(method=method))
        analyzer.analyse(path)  # warm-up: the second run is timed
        start = time.perf_counter()
        timelines[method] = analyzer.analyse(path)
        results[method] = {"seconds": round(time.perf_counter() - start, 3)}
    pooled, exact = timelines["pooled"].windows, timelines["exact"].windows
    assert [(w.start, w.end) for w in pooled] == [(w.start, w.end) for w in exact]
    same = np.mean([a.label == b.label for a, b in zip(pooled, exact, strict=True)])
    diff = np.array(
        [
            [abs(a.probabilities[e] - b.probabilities[e]) for e in a.probabilities]
            for a, b in zip(pooled, exact, strict=True)
        ]
    )
    duration = timelines["pooled"].summary.duration_s
    out = {
        "benchmark": "timeline-agreement",
        "model": str(args.model),
        "dtype": backbone.dtype,
        "recording_s": round(duration, 2),
        "speech_s": round(timelines["pooled"].summary.speech_s, 2),
        "windows": len(pooled),
        "same_top_label": round(float(same), 4),
        "probability_abs_diff_mean": round(float(diff.mean()), 4),
        "probability_abs_diff_max": round(float(diff.max()), 4),
        "pooled_s": results["pooled"]["seconds"],
        "exact_s": results["exact"]["seconds"],
        "pooled_rtf": round(results["pooled"]["seconds"] / duration, 4),
        "exact_rtf": round(results["exact"]["seconds"] / duration, 4),
        "speed_ratio": round(results["exact"]["seconds"] / results["pooled"]["seconds"], 2),
        "bundle_fit_s": round(fit_s, 1),
        "machine": machine_facts(),
    }
    print(
        f"{out['windows']} windows over {duration:.0f} s: same top label {out['same_top_label']:.3f}, "
        f"mean |dp| {out['probability_abs_diff_mean']:.4f}; pooled {out['pooled_s']:.1f} s "
        f"(RTF {out['pooled_rtf']:.3f}), exact {out['exact_s']:.1f} s (RTF {out['exact_rtf']:.3f})"
    )
    return out


def vad_sweep(args: argparse.Namespace) -> dict[str, Any]:
    """Speech coverage and early starts for VAD paddings and thresholds on a development recording."""
    from shared.audio import AudioStream
    from shared.vad import SpeechDetector, VadSettings

    data_dir = Path(args.data_dir)
    clips = pick_clips(ravdess_clips(data_dir, range(1, 13)), 60, seed=7)
    wave, truth = build_recording(clips, seed=7)
    path = write_flac(wave, Path(tempfile.mkdtemp(prefix="ser-vad-")) / "dev.flac")
    detector = SpeechDetector()
    probabilities, n = detector.probabilities(AudioStream(path))
    pauses = [(a.end, b.start) for a, b in zip(truth, truth[1:], strict=False)]
    rows = []
    for threshold in (0.5, 0.35):
        for pad_ms in (30, 100, 200):
            detector.settings = VadSettings(threshold=threshold, pad_ms=pad_ms)
            regions = detector.regions(probabilities, n)
            coverage = np.array(
                [
                    sum(max(0.0, min(t.end, r.end) - max(t.start, r.start)) for r in regions)
                    / (t.end - t.start)
                    for t in truth
                ]
            )
            early = sum(1 for r in regions for a, b in pauses if a < r.start < b and b - r.start > 0.3)
            rows.append(
                {
                    "threshold": threshold,
                    "pad_ms": pad_ms,
                    "clips_covered_80pct": round(float(np.mean(coverage >= 0.8)), 3),
                    "mean_coverage": round(float(coverage.mean()), 3),
                    "early_starts": early,
                    "regions": len(regions),
                }
            )
            print(
                f"threshold {threshold}, pad {pad_ms:>3} ms: {rows[-1]['clips_covered_80pct']:.0%} of clips 80% covered, "
                f"{early} regions starting over 0.3 s into a pause"
            )
    return {"benchmark": "timeline-vad", "actors": list(range(1, 13)), "clips": len(truth), "sweep": rows}


def long_recording(data_dir: Path, minutes: float, seed: int = 0) -> np.ndarray:
    """About ``minutes`` of RAVDESS speech with 0.3-1.5 s pauses (about 70% speech), looped to length."""
    clips = pick_clips(ravdess_clips(data_dir), 300, seed=seed)
    wave, _ = build_recording(clips, pause_range=(0.3, 1.5), seed=seed)
    return loop_to_length(wave, minutes * 60)


def cost(args: argparse.Namespace) -> dict[str, Any]:
    """Recordings through the jobs API of a real server (one fresh process each): time and peak memory."""
    import httpx

    from benchmarks.http import free_port, wait_ready, write_bundle
    from benchmarks.variants import make_model
    from shared.backbones import EncoderOptions, build_backbone

    data_dir = Path(args.data_dir)
    work = Path(tempfile.mkdtemp(prefix="ser-timeline-cost-"))
    folder = work / "model"
    make_model("large", folder)
    backbone = build_backbone(BackboneSpec(kind="hubert", model=str(folder)), EncoderOptions(dtype="bf16"))
    bundle = write_bundle(backbone, work / "artifacts", "timeline-cost")
    del backbone
    runs = []
    for minutes in args.minutes:
        wave = long_recording(data_dir, minutes)
        path = write_flac(wave, work / f"{minutes:g}min.flac")
        del wave
        port = free_port()
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "SER_BUNDLE": str(bundle),
            "SER_DTYPE": "bf16",
            "SER_PORT": str(port),
            "SER_JOBS_DIR": str(work / f"jobs-{minutes:g}"),
            "SER_CACHE_DIR": str(work / "cache"),
            "SER_LOG_LEVEL": "WARNING",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        }
        log_file = work / f"server-{minutes:g}.log"
        with log_file.open("wb") as sink:
            server = subprocess.Popen(
                [sys.executable, "-m", "service"],
                cwd=REPO_ROOT,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(server, url, log_file)
            ready_mem = read_proc_status(server.pid)
            with path.open("rb") as handle:
                started = time.perf_counter()
                created = httpx.post(
                    f"{url}/v1/jobs", content=handle, headers={"content-type": "audio/flac"}, timeout=600
                )
            created.raise_for_status()
            job = created.json()
            samples = []
            while job["state"] in ("queued", "running"):
                time.sleep(2.0)
                job = httpx.get(url + created.headers["location"], timeout=60).json()
                samples.append(read_proc_status(server.pid).get("VmRSS_mb", 0.0))
            wall = time.perf_counter() - started
            memory = read_proc_status(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=120)
        if job["state"] != "done":
            raise RuntimeError(f"the job ended {job['state']}: {job.get('error')}")
        summary = job["result"]["summary"]
        run = {
            "minutes": minutes,
            "upload_mb": round(path.stat().st_size / 1e6, 1),
            "duration_s": summary["duration_s"],
            "speech_s": summary["speech_s"],
            "speech_fraction": round(summary["speech_s"] / summary["duration_s"], 3),
            "windows": len(job["result"]["windows"]),
            "wall_s": round(wall, 1),
            "rtf": round(wall / summary["duration_s"], 4),
            "peak_rss_mb": round(memory.get("VmHWM_mb", 0.0), 1),
            "ready_rss_mb": round(ready_mem.get("VmRSS_mb", 0.0), 1),
            "max_sampled_rss_mb": round(max(samples, default=0.0), 1),
        }
        runs.append(run)
        print(
            f"{minutes:g} min ({run['speech_fraction']:.0%} speech): {run['wall_s']:.0f} s, RTF {run['rtf']:.3f}, "
            f"peak {run['peak_rss_mb']:.0f} MB (ready {run['ready_rss_mb']:.0f} MB)"
        )
        path.unlink()
    out: dict[str, Any] = {
        "benchmark": "timeline-cost",
        "model": "hubert-large architecture, random weights",
        "dtype": "bf16",
        "runs": runs,
        "machine": machine_facts(),
    }
    if len(runs) >= 2:
        out["peak_difference_mb"] = round(runs[-1]["peak_rss_mb"] - runs[0]["peak_rss_mb"], 1)
    return out


def floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.timeline", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    acc = sub.add_parser("accuracy", help="timelines against the truth of RAVDESS-built recordings (eGeMAPS)")
    acc.add_argument(
        "--windows", type=floats, default=[1.5, 2.0, 3.0, 4.0, 6.0], help="window lengths to compare (s)"
    )
    acc.add_argument("--recordings", type=int, default=3, help="held-out recordings")
    acc.add_argument("--clips", type=int, default=30, help="clips per held-out recording")
    agree = sub.add_parser("agreement", help="pooled against exact embeddings")
    agree.add_argument(
        "--model", default="large", help="large or tiny (random weights), or a checkpoint folder"
    )
    agree.add_argument("--dtype", default="bf16")
    agree.add_argument("--train-actors", type=int, default=4, help="actors the bundle is fitted on")
    agree.add_argument("--clips", type=int, default=30)
    sub.add_parser("vad", help="speech coverage for VAD paddings on a development recording (actors 1-12)")
    price = sub.add_parser("cost", help="long recordings through the jobs API: time and peak memory")
    price.add_argument("--minutes", type=floats, default=[10.0, 60.0])
    for p in (acc, agree, price, sub.choices["vad"]):
        p.add_argument("--data-dir", required=True, type=Path, help="the RAVDESS folder (Actor_NN/*.flac)")
        p.add_argument("--out", type=Path, help="write the JSON here")
    args = parser.parse_args(argv)
    result = {"accuracy": accuracy, "agreement": agreement, "cost": cost, "vad": vad_sweep}[args.command](
        args
    )
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
