"""In-process measurements: the machine, latency, FLOPs, embedding and prediction agreement, truncation,
batched throughput, and the memory of loading in bf16 (``load-peak``, run in fresh processes)."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks.variants import accuracy_clips
from shared.constants import EMOTIONS
from shared.signals import speech_like

if TYPE_CHECKING:
    from benchmarks.cli import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]


def stats(times: Sequence[float]) -> dict[str, float]:
    """Summary of durations in seconds."""
    arr = np.asarray(times, dtype=float)
    return {
        "median_s": float(np.median(arr)),
        "min_s": float(arr.min()),
        "p90_s": float(np.percentile(arr, 90)),
        "n": len(arr),
    }


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure_peak(size: int, repeats: int) -> dict[str, float]:
    """Best GFLOP/s of a ``size`` x ``size`` matmul, fp32 and bf16, on torch's current threads."""
    import torch

    out: dict[str, float] = {"matmul_size": size}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(size, size, dtype=dtype)
        b = torch.randn(size, size, dtype=dtype)
        a @ b
        best = min(timed(functools.partial(torch.matmul, a, b)) for _ in range(repeats))
        out[f"{name}_gflops"] = 2 * size**3 / best / 1e9
    return out


def count_gflop(model: Any, seconds: float, kept_layers: int | None = None) -> float:
    """FLOPs of one clip through a transformers model (eager attention, so its products are counted)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    layers = model.encoder.layers
    attn = model.config._attn_implementation
    model.set_attn_implementation("eager")
    if kept_layers is not None:
        model.encoder.layers = layers[:kept_layers]
    try:
        # no_grad, not inference_mode: weight-norm parametrisations fail under the counter otherwise.
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.from_numpy(speech_like(seconds, 0))[None])
    finally:
        model.encoder.layers = layers
        model.set_attn_implementation(attn)
    return counter.get_total_flops() / 1e9


def embedding_agreement(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """How close ``other`` is to ``reference`` (both ``[n_clips, d]``).

    Random weights make raw cosine meaningless (every clip's embedding points the same way), so both are
    centred on the reference's mean first. The error is also given relative to the mean distance between
    different clips' reference embeddings; ``common_offset`` is the part of it shared by all clips.
    """
    mean = reference.mean(axis=0)
    a, b = reference - mean, other - mean
    cosine = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)
    pairs = np.linalg.norm(reference[:, None] - reference[None], axis=2)
    inter = float(pairs[np.triu_indices(len(reference), 1)].mean())
    error = other - reference
    relative = np.linalg.norm(error, axis=1) / inter
    specific = np.linalg.norm(error - error.mean(axis=0), axis=1) / inter
    return {
        "centred_cosine_mean": float(cosine.mean()),
        "centred_cosine_min": float(cosine.min()),
        "relative_error_mean": float(relative.mean()),
        "relative_error_max": float(relative.max()),
        "common_offset": float(np.linalg.norm(error.mean(axis=0)) / inter),
        "clip_specific_error_mean": float(specific.mean()),
        "inter_clip_distance": inter,
    }


def read_proc_status(pid: int) -> dict[str, float]:
    """``VmHWM`` (peak resident) and ``VmRSS`` of a process, in MB."""
    out = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[f"{key}_mb"] = int(value.split()[0]) / 1024
    return out


def machine_facts() -> dict[str, Any]:
    import torch

    from shared.backbones.runtime import available_cpus, cpu_has_fast_bf16

    model_name = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    versions = {}
    for package in ("torch", "transformers", "onnxruntime", "onnx", "numpy", "scikit-learn"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[package] = version(package)
    return {
        "cpu": model_name,
        "cpus_available": available_cpus(),
        "torch_threads": torch.get_num_threads(),
        "avx512_bf16": bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()),
        "amx": bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()),
        "cpu_has_fast_bf16": cpu_has_fast_bf16(),
        "python": platform.python_version(),
        "versions": versions,
    }


def time_variants(
    backbones: dict[str, Any], cfg: Settings, flops: dict[str, dict[str, float]], peak: dict[str, float]
) -> dict[str, dict[str, dict[str, float]]]:
    clips = {str(s): speech_like(s, seed=7) for s in cfg.seconds}
    for clip in clips.values():  # warm-up: first calls build kernels and caches
        for backbone in backbones.values():
            backbone.embed_batch([clip])
    times: dict[str, dict[str, list[float]]] = {name: {s: [] for s in clips} for name in backbones}
    for _ in range(cfg.repeats):
        for s, clip in clips.items():
            for name, backbone in backbones.items():
                times[name][s].append(timed(functools.partial(backbone.embed_batch, [clip])))
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, per_len in times.items():
        dtype = getattr(backbones[name], "dtype", "fp32")
        out[name] = {}
        for s, values in per_len.items():
            entry = stats(values)
            gflop = flops[s]["naive_gflop" if name == "naive" else "project_gflop"]
            median = entry["median_s"]
            entry.update(
                clips_per_s=1 / median,
                real_time_factor=median / float(s),
                gflop=gflop,
                gflops_per_s=gflop / median,
                fraction_of_fp32_peak=gflop / median / peak["fp32_gflops"],
            )
            if dtype == "bf16":
                entry["fraction_of_bf16_peak"] = gflop / median / peak["bf16_gflops"]
            out[name][s] = entry
    return out


def measure_accuracy(backbones: dict[str, Any], n_clips: int) -> dict[str, Any]:
    clips, source = accuracy_clips(n_clips)
    embeddings = {name: backbone.embed_batch(clips) for name, backbone in backbones.items()}
    reference = "torch-fp32" if "torch-fp32" in embeddings else "naive" if "naive" in embeddings else None
    out: dict[str, Any] = {"clips": source, "reference": reference, "variants": {}}
    if reference is None:
        return out
    for name, emb in embeddings.items():
        out["variants"][name] = embedding_agreement(embeddings[reference], emb)
    return out


def measure_prediction_agreement(backbones: dict[str, Any], n_clips: int) -> dict[str, Any]:
    """What each variant does to predictions, on real speech with a speaker-independent split.

    ``n_clips`` RAVDESS clips, as many of each of the six emotions, spread over all actors (from
    ``$SER_TEST_DATA``); the project's classifier is fitted on fp32 embeddings of actors 1-16 and
    predicts actors 17-24 from each variant's embeddings. Reports, per variant: the share of predictions equal to fp32's, unweighted
    accuracy, and the largest change of a class probability.
    """
    from sklearn.metrics import balanced_accuracy_score

    from shared.audio import load_audio
    from training.corpora.ravdess import prepare_ravdess
    from training.pipeline import make_pipeline

    data = os.environ.get("SER_TEST_DATA")
    folder = Path(data) / "ravdess16k" if data else None
    if folder is None or not folder.is_dir():
        return {"skipped": "needs the RAVDESS folder: set SER_TEST_DATA to the shared data folder"}
    utterances = list(prepare_ravdess(folder).utterances)
    chosen = []
    for label in EMOTIONS:  # the same number of each emotion, spread over the actors
        of_label = [u for u in utterances if u.label == label]
        per_label = min(len(of_label), max(1, n_clips // len(EMOTIONS)))
        chosen += [of_label[i * len(of_label) // per_label] for i in range(per_label)]
    waves = [load_audio(u.path.read_bytes()) for u in chosen]
    labels = np.array([u.label for u in chosen])
    test = np.array([int(u.meta["actor"]) > 16 for u in chosen])
    reference = "torch-fp32" if "torch-fp32" in backbones else "naive"
    if reference not in backbones:
        return {"skipped": "needs the torch-fp32 or naive variant as the reference"}
    embeddings = {
        name: b.embed_batch(waves) for name, b in backbones.items() if name != "naive" or name == reference
    }
    train = embeddings[reference][~test]
    pipeline = make_pipeline(len(train), train.shape[1]).fit(train, labels[~test])
    expected = pipeline.predict(embeddings[reference][test])
    expected_proba = pipeline.predict_proba(embeddings[reference][test])
    out: dict[str, Any] = {
        "clips": len(chosen),
        "train_clips": int((~test).sum()),
        "test_clips": int(test.sum()),
        "reference": reference,
        "variants": {},
    }
    for name, emb in embeddings.items():
        predicted = pipeline.predict(emb[test])
        out["variants"][name] = {
            "same_prediction_as_reference": float(np.mean(predicted == expected)),
            "unweighted_accuracy": float(balanced_accuracy_score(labels[test], predicted)),
            "max_probability_change": float(np.abs(pipeline.predict_proba(emb[test]) - expected_proba).max()),
        }
    return out


def measure_truncation(folder: Path, cfg: Settings, n_layers: int) -> dict[str, Any]:
    """fp32 torch time on a 2.5 s clip reading layer n/2, 3n/4 and the top (all layers run)."""
    from shared.backbones import BackboneSpec, EncoderOptions, build_backbone

    clip = speech_like(2.5, seed=7)
    layers = sorted({max(1, n_layers // 2), max(1, 3 * n_layers // 4), n_layers})
    options = EncoderOptions(threads=cfg.threads, offline=True)
    encoders: dict[int, Any] = {
        layer: build_backbone(BackboneSpec(kind="hubert", model=str(folder), layer=layer), options)
        for layer in layers
    }
    for encoder in encoders.values():
        encoder.embed_batch([clip])
    times: dict[int, list[float]] = {layer: [] for layer in layers}
    for _ in range(max(2, cfg.repeats // 2)):
        for layer, encoder in encoders.items():
            times[layer].append(timed(functools.partial(encoder.embed_batch, [clip])))
    full = float(np.median(times[n_layers]))
    return {
        str(layer): {
            "layers_run": len(encoders[layer].model.encoder.layers),
            "median_s": float(np.median(values)),
            "fraction_of_all_layers": float(np.median(values)) / full,
        }
        for layer, values in times.items()
    }


def batched_throughput(backbone: Any, size: int, repeats: int) -> float:
    """Clips/s of ``backbone`` on one batch of ``size`` equal 2.5 s clips (median of ``repeats``)."""
    batch = [speech_like(2.5, seed=50 + i) for i in range(size)]
    backbone.embed_batch(batch)
    return size / float(
        np.median([timed(functools.partial(backbone.embed_batch, batch)) for _ in range(repeats)])
    )


def measure_batched(backbone: Any, cfg: Settings) -> dict[str, Any]:
    """Clips/s for batches of equal 2.5 s clips; ``best`` is the highest."""
    out: dict[str, Any] = {}
    for size in cfg.batch_sizes:
        clips_per_s = batched_throughput(backbone, size, max(2, cfg.repeats // 2))
        out[str(size)] = {"median_s": size / clips_per_s, "clips_per_s": clips_per_s}
    best = max(out, key=lambda k: out[k]["clips_per_s"])
    out["best"] = {"batch_size": int(best), "clips_per_s": out[best]["clips_per_s"]}
    return out


def load_peak(argv: list[str]) -> int:
    """Load an encoder in bf16 in this (fresh) process, run one 1 s clip, and print its memory as JSON.

    ``--how transformers``: ``from_pretrained(..., dtype=bfloat16)`` straight from the fp32 checkpoint;
    ``--how project``: ``build_backbone(spec, EncoderOptions(dtype="bf16"))`` (the cached bf16 copy, converted
    first if absent).
    """
    parser = argparse.ArgumentParser(prog="python -m benchmarks load-peak")
    parser.add_argument("--model", required=True, help="a folder, or a hub id (read from HF_HUB_CACHE)")
    parser.add_argument("--how", choices=("transformers", "project"), required=True)
    parser.add_argument("--cache-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    import torch

    clip = speech_like(1.0, seed=3)
    before = read_proc_status(os.getpid())
    start = time.perf_counter()
    if args.how == "transformers":
        from transformers import AutoModel

        model = AutoModel.from_pretrained(args.model, dtype=torch.bfloat16).eval()
        seconds = time.perf_counter() - start
        after_load = read_proc_status(os.getpid())
        with torch.inference_mode():
            model(torch.from_numpy(clip)[None].to(torch.bfloat16))
    else:
        from shared.backbones import BackboneSpec, EncoderOptions, build_backbone

        spec = BackboneSpec(kind="hubert", model=str(args.model))
        backbone = build_backbone(spec, EncoderOptions(dtype="bf16", cache_dir=args.cache_dir, offline=True))
        seconds = time.perf_counter() - start
        after_load = read_proc_status(os.getpid())
        backbone.embed_batch([clip])
    # The weights are memory-mapped where possible: the first forward pass is what brings them in.
    after_forward = read_proc_status(os.getpid())
    print(
        json.dumps(
            {
                "before_load": before,
                "after_load": after_load,
                "after_forward": after_forward,
                "load_s": seconds,
            }
        )
    )
    return 0


def measure_load_peaks(model: str | Path, cache_dir: Path, quick: bool) -> dict[str, Any]:
    """Peak memory of loading the encoder in bf16, each way in a fresh process (VmHWM, MB).

    ``quick`` measures the project's first load only (each process costs seconds of imports).
    """
    out: dict[str, Any] = {}
    scratch = cache_dir / "load-peak"  # its own cache: the first project load converts, the second reuses
    ways = [
        ("transformers_from_pretrained_bf16", "transformers"),
        ("project_bf16_first_load", "project"),
        ("project_bf16_cached", "project"),
    ]
    for label, how in ways[1:2] if quick else ways:
        command = [sys.executable, "-m", "benchmarks", "load-peak", "--model", str(model)]
        command += ["--how", how, "--cache-dir", str(scratch)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # HF_HUB_CACHE is inherited for a hub id
        done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            out[label] = {"error": done.stderr[-1000:]}
            continue
        out[label] = json.loads(done.stdout.strip().splitlines()[-1])
    shutil.rmtree(scratch, ignore_errors=True)
    return out
