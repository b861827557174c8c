"""``python -m service.benchmark``: the project's inference path against the naive one, in one run.

What it measures, on a HuBERT-large architecture with random weights (compute cost does not depend on
the weights' values) saved with ``save_pretrained`` and loaded through the project's own code:

* the machine: peak matrix throughput (a large fp32 and bf16 matmul) and the CPUs available;
* latency for each clip length (``--seconds``) and variant (``--variants``): the naive baseline
  (transformers ``HubertModel``, fp32, eager, batch 1, every layer) and the project's backbones (torch
  fp32/bf16, ONNX Runtime fp32/int8), with clips/s, real-time factor, GFLOP/s (FLOPs counted with
  ``torch.utils.flop_counter``) as a fraction of the measured peak, and the speed-up over naive. The
  variants run interleaved, round after round, so that the machine's drift hits them alike;
* each variant's embedding error against fp32: cosine after subtracting the reference's mean embedding,
  and distance to the fp32 embedding relative to the mean distance between different clips (real speech
  from ``$SER_TEST_DATA/ravdess16k`` when set, else generated speech-like signals);
* what dropping the layers above the one read saves;
* the peak memory of loading the encoder in bf16 (transformers' ``from_pretrained(dtype=bfloat16)``
  against the project's cached bf16 copy), each in a fresh process;
* batched throughput, then the service over HTTP on loopback (``--http-variants``): a real uvicorn server
  in a subprocess serving a bundle fitted over the same model, single-client p50/p95/p99 latency against
  the backbone's own time, throughput and tail latency for 1, 4 and 16 concurrent clients, failures,
  time from start to ready and the server's peak memory (``VmHWM``).

It writes JSON (``--out``, default ``bench-results/benchmark.json``) and prints a summary with the
pass/fail of each target. Timings on shared machines drift; compare the ratios of one run.

``--quick --model tiny`` runs the whole thing in seconds on a tiny HuBERT (a smoke test: its figures mean
nothing). ``serve`` and ``load-peak`` are internal subcommands run in subprocesses.

This is a development tool: it imports ``training.pipeline`` (to fit the bundle's classifier), which the
service itself never does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import io
import json
import logging
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from shared.constants import EMOTIONS, SAMPLE_RATE
from shared.signals import speech_like

log = logging.getLogger("service.benchmark")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path("bench-results/benchmark.json")
ALL_VARIANTS = ("naive", "torch-fp32", "torch-bf16", "onnx-fp32", "onnx-int8")

#: facebook/hubert-large-ll60k's architecture.
LARGE_CONFIG: dict[str, Any] = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "feat_extract_norm": "layer",
    "do_stable_layer_norm": True,
    "conv_bias": True,
}
#: A HuBERT small enough for a smoke test (hidden size 16, 3 layers).
TINY_CONFIG: dict[str, Any] = {
    "hidden_size": 16,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "conv_dim": (16,) * 7,
    "feat_extract_norm": "layer",
    "do_stable_layer_norm": True,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 2,
}

# Targets (ratios measured in one run).
TARGET_DEFAULT_SPEEDUP = 2.0
TARGET_DEFAULT_ERROR = 0.02
TARGET_INT8_SPEEDUP = 3.0
TARGET_HTTP_OVERHEAD = 1.15
TARGET_THROUGHPUT_RATIO = 0.9
TARGET_BF16_PEAK_MB = 1200.0


# -- variants ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One way of computing embeddings: ``backend`` naive/torch/onnx/onnx-int8 and its precision."""

    name: str
    backend: str
    dtype: str

    @classmethod
    def parse(cls, name: str) -> Variant:
        if name == "naive":
            return cls(name, "naive", "fp32")
        if name in ("torch-fp32", "torch-bf16"):
            return cls(name, "torch", name.split("-")[1])
        if name == "onnx-fp32":
            return cls(name, "onnx", "fp32")
        if name == "onnx-int8":
            return cls(name, "onnx-int8", "int8")
        raise SystemExit(f"unknown variant {name!r}; accepted: {', '.join(ALL_VARIANTS)}, default")


def default_variant_name() -> str:
    """The variant the project's default (``dtype="auto"``, torch) resolves to on this machine."""
    import torch

    from shared.backbones.hubert import resolve_dtype

    return f"torch-{resolve_dtype('auto', torch.device('cpu'))}"


class NaiveEncoder:
    """The baseline: transformers as its documentation uses it. The feature extractor, then
    ``HubertModel`` in fp32 with every layer, one clip at a time, mean over frames."""

    dtype = "fp32"

    def __init__(self, folder: Path, layer: int | None) -> None:
        from transformers import AutoFeatureExtractor, AutoModel

        self.extractor = AutoFeatureExtractor.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()
        self.layer = layer

    def embed_batch(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        out = []
        for wave in waveforms:
            inputs = self.extractor(wave, sampling_rate=SAMPLE_RATE, return_tensors="pt")
            with torch.inference_mode():
                result = self.model(inputs["input_values"], output_hidden_states=self.layer is not None)
            hidden = result.last_hidden_state if self.layer is None else result.hidden_states[self.layer]
            out.append(hidden[0].mean(dim=0).float().numpy())
        return np.stack(out)


def build_variant(variant: Variant, folder: Path, spec: Any, cache_dir: Path, threads: int | None) -> Any:
    from shared.backbones import build_backbone

    if variant.backend == "naive":
        return NaiveEncoder(folder, spec.layer)
    return build_backbone(
        spec,
        backend=variant.backend,
        dtype=variant.dtype if variant.backend == "torch" else "fp32",
        threads=threads,
        cache_dir=cache_dir,
        local_files_only=True,
    )


# -- inputs -------------------------------------------------------------------------------------


def accuracy_clips(n: int) -> tuple[list[np.ndarray], str]:
    """``n`` different clips: RAVDESS speech from ``$SER_TEST_DATA`` when set, else generated ones."""
    from shared.audio import load_audio

    data = os.environ.get("SER_TEST_DATA")
    folder = Path(data) / "ravdess16k" if data else None
    if folder is not None and folder.is_dir():
        files = sorted(folder.glob("Actor_*/*.*"))
        if len(files) >= n:
            step = len(files) // n
            # Different actors and, with this stride, mostly different emotions.
            chosen = [files[i * step + (i * 7) % step] for i in range(n)]
            return [load_audio(p.read_bytes()) for p in chosen], f"ravdess16k ({n} files)"
    return [speech_like(2.0 + 0.25 * (i % 5), seed=1000 + i) for i in range(n)], f"generated ({n} clips)"


def make_model(kind: str, folder: Path) -> dict[str, Any]:
    """Save a random-weight HuBERT (``large`` or ``tiny``) with its feature extractor; returns its config."""
    import torch
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    config = HubertConfig(**(LARGE_CONFIG if kind == "large" else TINY_CONFIG))
    torch.manual_seed(0)
    model = HubertModel(config)
    model.save_pretrained(folder)
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=SAMPLE_RATE, do_normalize=True, return_attention_mask=True
    ).save_pretrained(folder)
    return {"kind": kind, "parameters": sum(p.numel() for p in model.parameters()), **config.to_dict()}


# -- measuring --------------------------------------------------------------------------------


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

    from shared.backbones.hubert import available_cpus, cpu_has_fast_bf16

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


# -- the benchmark ----------------------------------------------------------------------------


@dataclass
class Settings:
    model: str
    layer: int | None
    variants: list[str]
    seconds: list[float]
    repeats: int
    threads: int | None
    cache_dir: Path | None
    accuracy_clips: int
    agreement_clips: int
    skip_http: bool
    http_variants: list[str]
    http_requests: int
    concurrency: list[int]
    batch_sizes: list[int]
    peak_size: int
    quick: bool
    command: str = "python -m service.benchmark"


def run_benchmark(cfg: Settings, say: Callable[[str], None]) -> dict[str, Any]:
    import torch

    from shared.backbones import BackboneSpec
    from shared.backbones.hubert import configure_torch_threads

    configure_torch_threads(cfg.threads)
    result: dict[str, Any] = {
        "command": cfg.command,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_start": list(os.getloadavg()),
        "machine": machine_facts(),
        "quick": cfg.quick,
    }
    work = Path(tempfile.mkdtemp(prefix="ser-bench-"))
    if cfg.cache_dir is None:
        # The random model is new each run: its exports and converted weights would never be reused.
        cfg.cache_dir = work / "cache"
    try:
        folder = work / "model"
        if cfg.model in ("large", "tiny"):
            say(f"saving a random-weight HuBERT ({cfg.model}) to {folder}")
            result["model"] = make_model(cfg.model, folder)
        else:
            folder = Path(cfg.model)
            result["model"] = {"kind": "folder", "path": str(folder)}
        spec = BackboneSpec(kind="hubert", model=str(folder), layer=cfg.layer)
        result["spec"] = spec.to_dict()

        say("measuring the machine's peak matmul throughput")
        peak = measure_peak(cfg.peak_size, 2 if cfg.quick else 4)
        result["peak"] = peak

        variants = [Variant.parse(v) for v in cfg.variants]
        backbones: dict[str, Any] = {}
        result["load_s"] = {}
        for variant in variants:
            say(f"loading {variant.name}")
            start = time.perf_counter()
            backbones[variant.name] = build_variant(variant, folder, spec, cfg.cache_dir, cfg.threads)
            result["load_s"][variant.name] = time.perf_counter() - start
        default = default_variant_name()
        result["default_variant"] = default
        result["torch_threads"] = torch.get_num_threads()

        # FLOPs, counted on the fp32 transformers graph (one clip each; doubles as a warm-up of nothing).
        counter_model = (
            backbones["naive"].model if "naive" in backbones else NaiveEncoder(folder, cfg.layer).model
        )
        n_layers = int(counter_model.config.num_hidden_layers)
        kept = next((b.kept_layers for b in backbones.values() if hasattr(b, "kept_layers")), n_layers)
        flops = {}
        for seconds in cfg.seconds:
            full = count_gflop(counter_model, seconds)
            flops[str(seconds)] = {
                "naive_gflop": full,
                "project_gflop": full if kept >= n_layers else count_gflop(counter_model, seconds, kept),
            }
        result["flops"] = flops

        say(f"timing {', '.join(backbones)} on {cfg.seconds} s clips, {cfg.repeats} rounds, interleaved")
        result["latency"] = time_variants(backbones, cfg, flops, peak)
        if "naive" in backbones:
            result["speedup_vs_naive"] = {
                name: {s: result["latency"]["naive"][s]["median_s"] / per_len[s]["median_s"] for s in per_len}
                for name, per_len in result["latency"].items()
            }

        say(f"comparing embeddings with fp32 on {cfg.accuracy_clips} clips")
        result["accuracy"] = measure_accuracy(backbones, cfg.accuracy_clips)

        if cfg.agreement_clips:
            say(f"prediction agreement with fp32 on {cfg.agreement_clips} RAVDESS clips")
            result["prediction_agreement"] = measure_prediction_agreement(backbones, cfg.agreement_clips)

        say("measuring what dropping the layers above the one read saves")
        result["truncation"] = measure_truncation(folder, cfg, n_layers)

        say("peak memory of loading the encoder in bf16, in fresh processes")
        result["load_memory"] = measure_load_peaks(folder, cfg.cache_dir, cfg.quick)

        result["batched"] = {}
        served = [name for name in cfg.http_variants if name in backbones]
        for name in served:
            say(f"batched throughput of {name}")
            result["batched"][name] = measure_batched(backbones[name], cfg)

        if not cfg.skip_http:
            result["http"] = {}
            for name in served:
                variant = Variant.parse(name)
                say(f"serving {name} over HTTP")
                result["http"][name] = measure_http(
                    variant, backbones[name], spec, work, cfg, result["batched"][name], say
                )
        result["load_average_end"] = list(os.getloadavg())
        result["targets"] = evaluate_targets(result, cfg)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


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
    from shared.backbones import BackboneSpec, build_backbone

    clip = speech_like(2.5, seed=7)
    layers = sorted({max(1, n_layers // 2), max(1, 3 * n_layers // 4), n_layers})
    encoders: dict[int, Any] = {
        layer: build_backbone(
            BackboneSpec(kind="hubert", model=str(folder), layer=layer),
            threads=cfg.threads,
            local_files_only=True,
        )
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


# -- HTTP -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wav_bytes(wave: np.ndarray) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, wave, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def write_bundle(backbone: Any, spec: Any, artifacts: Path, name: str) -> Path:
    """A real bundle: the sklearn pipeline fitted on a few dozen generated clips embedded by ``backbone``."""
    try:
        from training.pipeline import make_pipeline
    except ImportError as exc:
        raise SystemExit(
            "the HTTP benchmark needs the training package (run it from a source checkout)"
        ) from exc
    from shared.bundle import save_bundle

    per_class = 5
    waves, labels = [], []
    for c, label in enumerate(EMOTIONS):
        for i in range(per_class):
            waves.append(speech_like(1.0 + 0.1 * i, seed=300 + 10 * c + i))
            labels.append(label)
    x = backbone.embed_batch(waves)
    # Random weights give near-identical embeddings; a class-dependent shift keeps the fit well posed.
    x = x + np.repeat(np.eye(len(EMOTIONS), x.shape[1]), per_class, axis=0) * float(np.std(x) + 1e-3)
    pipeline = make_pipeline(len(x), x.shape[1], min_class_count=per_class).fit(x, labels)
    return save_bundle(
        artifacts,
        name="benchmark",
        version=name,
        pipeline=pipeline,
        backbone={**spec.to_dict(), "dim": backbone.dim, "dtype": backbone.dtype, **backbone.fingerprint},
        training={"corpus": "generated", "n_utterances": len(waves)},
        metrics={},
    )


def percentiles(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return {}
    return {
        "p50_s": float(np.percentile(arr, 50)),
        "p95_s": float(np.percentile(arr, 95)),
        "p99_s": float(np.percentile(arr, 99)),
        "mean_s": float(arr.mean()),
        "max_s": float(arr.max()),
    }


async def _load(url: str, body: bytes, clients: int, total: int) -> dict[str, Any]:
    """``clients`` concurrent clients POST ``body`` until ``total`` requests are done."""
    import httpx

    latencies: list[float] = []
    server_inference: list[float] = []
    batch_sizes: list[int] = []
    failures: list[str] = []
    issued = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal issued
        while issued < total:
            issued += 1
            start = time.perf_counter()
            try:
                response = await http.post("/v1/predict", files={"file": ("clip.wav", body, "audio/wav")})
            except httpx.HTTPError as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                continue
            elapsed = time.perf_counter() - start
            if response.status_code != 200:
                failures.append(f"HTTP {response.status_code}: {response.text[:200]}")
                continue
            data = response.json()
            latencies.append(elapsed)
            server_inference.append(data["timings_ms"]["inference"] / 1000)
            batch_sizes.append(int(data["batch_size"]))

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - start
    return _load_summary(
        clients, total, latencies, server_inference, batch_sizes, failures, len(failures), wall
    )


def _load_summary(
    clients: int,
    total: int,
    latencies: list[float],
    server_inference: list[float],
    batch_sizes: list[int],
    failures: list[str],
    failed: int,
    wall: float,
) -> dict[str, Any]:
    return {
        "clients": clients,
        "requests": total,
        "ok": len(latencies),
        "failed": failed,
        "failures": failures[:5],
        "wall_s": wall,
        "throughput_clips_per_s": len(latencies) / wall,
        "latency": percentiles(latencies),
        "server_inference_median_s": float(np.median(server_inference)) if server_inference else None,
        "mean_batch_size": float(np.mean(batch_sizes)) if batch_sizes else None,
        "latencies_s": latencies,
        "server_inference_s": server_inference,
        "batch_sizes": batch_sizes,
    }


def merge_loads(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One summary of several ``_load`` runs with the same number of clients."""
    return _load_summary(
        parts[0]["clients"],
        sum(p["requests"] for p in parts),
        [x for p in parts for x in p["latencies_s"]],
        [x for p in parts for x in p["server_inference_s"]],
        [x for p in parts for x in p["batch_sizes"]],
        [x for p in parts for x in p["failures"]],
        sum(p["failed"] for p in parts),
        sum(p["wall_s"] for p in parts),
    )


def start_server(
    bundle: Path, variant: Variant, cfg: Settings, log_file: Path
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    assert cfg.cache_dir is not None
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "SER_CACHE_DIR": str(cfg.cache_dir),
        "SER_ONNX_CACHE": str(cfg.cache_dir / "onnx"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, "-m", "service.benchmark", "serve", "--bundle", str(bundle)]
    command += ["--variant", variant.name, "--port", str(port)]
    if cfg.threads:
        command += ["--threads", str(cfg.threads)]
    with log_file.open("wb") as sink:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    return process, f"http://127.0.0.1:{port}"


def wait_ready(process: subprocess.Popen, url: str, log_file: Path, timeout: float = 900) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}):\n{log_file.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            response = httpx.get(f"{url}/ready", timeout=5)
            if response.status_code == 200:
                return
            if "failed to load" in response.text:
                raise RuntimeError(f"the server could not load the model: {response.text}")
        time.sleep(0.05)
    raise RuntimeError(f"the server was not ready after {timeout:.0f} s")


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def measure_http(
    variant: Variant,
    backbone: Any,
    spec: Any,
    work: Path,
    cfg: Settings,
    batched: dict[str, Any],
    say: Callable[[str], None],
) -> dict[str, Any]:
    from service.settings import ServiceSettings
    from shared.audio import load_audio

    defaults = ServiceSettings(bundle=work)
    bundle = write_bundle(backbone, spec, work / "artifacts", variant.name)
    clip = speech_like(2.5, seed=7)
    body = wav_bytes(clip)
    decoded_clip = load_audio(body)  # what the server's decoder gives the model
    log_file = work / f"server-{variant.name}.log"
    started = time.perf_counter()
    process, url = start_server(bundle, variant, cfg, log_file)
    out: dict[str, Any] = {"bundle": str(bundle)}
    try:
        wait_ready(process, url, log_file)
        out["start_to_ready_s"] = time.perf_counter() - started
        out["memory_after_start"] = read_proc_status(process.pid)

        # The backbone's own time on this clip, in this process, timed in turns with the requests: this
        # machine's speed drifts by 10-20% over minutes, and the ratio must not measure that.
        say(f"  one client, {cfg.http_requests} requests, in turns with the backbone's own forward")
        backbone.embed_batch([decoded_clip])
        asyncio.run(_load(url, body, 1, 2))  # warm the connection path
        turns = 2 if cfg.quick else 6
        forward: list[float] = []
        parts = []
        for turn in range(turns):
            forward += [timed(lambda: backbone.embed_batch([decoded_clip])) for _ in range(2)]
            share = cfg.http_requests // turns + (1 if turn < cfg.http_requests % turns else 0)
            parts.append(asyncio.run(_load(url, body, 1, share)))
        out["forward_s"] = stats(forward)
        single = merge_loads(parts)
        out["single_client"] = single
        p50 = single["latency"].get("p50_s")
        out["single_client_p50_over_forward"] = p50 / out["forward_s"]["median_s"] if p50 else None
        server_inf = single["server_inference_median_s"]
        out["single_client_p50_over_server_inference"] = p50 / server_inf if p50 and server_inf else None

        out["concurrency"] = {}
        top = max(cfg.concurrency)
        batch = defaults.max_batch_size
        # The in-process references of the heaviest load (the best batch size found earlier, and the
        # batch size the server runs) are timed just before and just after it, with the server idle:
        # this machine's speed drifts by 10-20% over minutes, and a ratio must not measure that.
        sizes = sorted({int(batched["best"]["batch_size"]), batch})
        around: dict[int, list[float]] = {size: [] for size in sizes}

        def time_references() -> None:
            for size in sizes:
                around[size].append(batched_throughput(backbone, size, max(2, cfg.repeats // 2)))

        for clients in cfg.concurrency:
            total = max(cfg.http_requests, 3 * clients) if not cfg.quick else max(4, 2 * clients)
            if clients == top:
                time_references()
            say(f"  {clients} concurrent clients, {total} requests")
            out["concurrency"][str(clients)] = asyncio.run(_load(url, body, clients, total))
            if clients == top:
                time_references()
        out["memory"] = read_proc_status(process.pid)
    finally:
        stop_server(process)
        out["server_log_tail"] = log_file.read_text(errors="replace")[-2000:]

    heavy = out["concurrency"][str(top)]
    timed_around = {
        str(size): {"before": v[0], "after": v[1], "mean": float(np.mean(v))} for size, v in around.items()
    }
    best_size = max(around, key=lambda size: float(np.mean(around[size])))
    best_around = float(np.mean(around[best_size]))
    batch_time = batch / float(np.mean(around[batch]))
    # A request waits for the batch in progress, the batches ahead of it, then its own.
    bound = (math.ceil((top - 1) / batch) + 1) * batch_time + defaults.max_batch_wait_ms / 1000
    out["queue_settings"] = {
        "max_batch_size": batch,
        "max_batch_wait_ms": defaults.max_batch_wait_ms,
        "queue_depth": defaults.queue_depth,
        "request_timeout_s": defaults.request_timeout_s,
    }
    out["best_batched_clips_per_s"] = batched["best"]["clips_per_s"]
    out["batched_clips_per_s_around_load"] = timed_around
    out["best_batched_clips_per_s_around_load"] = {"batch_size": best_size, "clips_per_s": best_around}
    # Against the backbone's best batched throughput timed around the load (see above); the ratio
    # against the figure timed minutes earlier is kept for comparison.
    out["throughput_ratio_at_max_clients"] = heavy["throughput_clips_per_s"] / best_around
    out["throughput_ratio_vs_earlier_best"] = heavy["throughput_clips_per_s"] / batched["best"]["clips_per_s"]
    out["p99_bound_s"] = bound
    return out


def evaluate_targets(result: dict[str, Any], cfg: Settings) -> list[dict[str, Any]]:
    """Each target with its measured figure and whether it is met (None: not measured in this run)."""
    targets: list[dict[str, Any]] = []

    def add(name: str, target: str, measured: Any, ok: bool | None) -> None:
        targets.append({"name": name, "target": target, "measured": measured, "met": ok})

    default = result.get("default_variant")
    speedups = result.get("speedup_vs_naive", {})
    accuracy = result.get("accuracy", {}).get("variants", {})
    if default in speedups and "2.5" in speedups[default]:
        speed = speedups[default]["2.5"]
        error = accuracy.get(default, {}).get("relative_error_mean")
        add(
            f"default path ({default}) vs naive, 2.5 s",
            f">= {TARGET_DEFAULT_SPEEDUP}x and error < {TARGET_DEFAULT_ERROR:.0%} of inter-clip distance",
            {"speedup": speed, "relative_error_mean": error},
            speed >= TARGET_DEFAULT_SPEEDUP and error is not None and error < TARGET_DEFAULT_ERROR,
        )
    if "onnx-int8" in speedups and "2.5" in speedups["onnx-int8"]:
        speed = speedups["onnx-int8"]["2.5"]
        add("onnx-int8 vs naive, 2.5 s", f">= {TARGET_INT8_SPEEDUP}x", speed, speed >= TARGET_INT8_SPEEDUP)
    for name, http in result.get("http", {}).items():
        ratio = http.get("single_client_p50_over_forward")
        add(
            f"{name}: HTTP p50 / backbone forward",
            f"<= {TARGET_HTTP_OVERHEAD}",
            ratio,
            None if ratio is None else ratio <= TARGET_HTTP_OVERHEAD,
        )
        top = str(max(cfg.concurrency))
        heavy = http["concurrency"][top]
        ratio = http["throughput_ratio_at_max_clients"]
        p99 = heavy["latency"].get("p99_s")
        add(
            f"{name}: {top} clients",
            f"throughput >= {TARGET_THROUGHPUT_RATIO} x best batched (timed around the load), p99 <= bound, "
            "no failure",
            {
                "throughput_ratio": ratio,
                "p99_s": p99,
                "p99_bound_s": http["p99_bound_s"],
                "failed": heavy["failed"],
            },
            ratio >= TARGET_THROUGHPUT_RATIO
            and p99 is not None
            and p99 <= http["p99_bound_s"]
            and heavy["failed"] == 0,
        )
        if name.endswith("bf16") and result["model"].get("kind") == "large":
            peak = http.get("memory", {}).get("VmHWM_mb")
            add(
                f"{name}: server peak memory (VmHWM)",
                f"< {TARGET_BF16_PEAK_MB:.0f} MB",
                peak,
                None if peak is None else peak < TARGET_BF16_PEAK_MB,
            )
    return targets


# -- report -----------------------------------------------------------------------------------


def summary_lines(result: dict[str, Any]) -> list[str]:
    lines = []
    machine = result["machine"]
    lines.append(
        f"{machine['cpu']}: {machine['cpus_available']} CPUs, torch threads {result.get('torch_threads')}, "
        f"avx512_bf16 {machine['avx512_bf16']}, amx {machine['amx']}; load {result['load_average_start'][0]:.2f} -> "
        f"{result.get('load_average_end', [float('nan')])[0]:.2f}"
    )
    peak = result["peak"]
    lines.append(
        f"peak matmul: fp32 {peak['fp32_gflops']:.0f} GFLOP/s, bf16 {peak['bf16_gflops']:.0f} GFLOP/s"
    )
    lines.append(f"default variant (dtype auto): {result['default_variant']}")
    header = f"{'variant':<12}{'clip s':>7}{'median s':>10}{'clips/s':>9}{'RTF':>7}{'GFLOP/s':>9}{'%fp32pk':>8}{'speedup':>9}"
    lines.append(header)
    for name, per_len in result["latency"].items():
        for s, entry in per_len.items():
            speed = result.get("speedup_vs_naive", {}).get(name, {}).get(s)
            lines.append(
                f"{name:<12}{s:>7}{entry['median_s']:>10.3f}{entry['clips_per_s']:>9.2f}"
                f"{entry['real_time_factor']:>7.3f}{entry['gflops_per_s']:>9.1f}"
                f"{100 * entry['fraction_of_fp32_peak']:>7.0f}%{'' if speed is None else f'{speed:>8.2f}x'}"
            )
    acc = result.get("accuracy", {})
    if acc.get("variants"):
        lines.append(f"embedding vs {acc['reference']} on {acc['clips']}:")
        for name, entry in acc["variants"].items():
            lines.append(
                f"  {name:<12} centred cosine {entry['centred_cosine_mean']:.5f} (min {entry['centred_cosine_min']:.5f}), "
                f"error {100 * entry['relative_error_mean']:.2f}% of inter-clip distance "
                f"(max {100 * entry['relative_error_max']:.2f}%, common offset {100 * entry['common_offset']:.2f}%)"
            )
    agreement = result.get("prediction_agreement", {})
    if agreement.get("variants"):
        lines.append(
            f"predictions vs {agreement['reference']}, classifier fitted on {agreement['train_clips']} RAVDESS clips "
            f"(actors 1-16), tested on {agreement['test_clips']} (actors 17-24):"
        )
        for name, entry in agreement["variants"].items():
            lines.append(
                f"  {name:<12} same prediction {100 * entry['same_prediction_as_reference']:.1f}%, "
                f"UA {entry['unweighted_accuracy']:.3f}, largest probability change {entry['max_probability_change']:.3f}"
            )
    elif "skipped" in agreement:
        lines.append(f"prediction agreement skipped: {agreement['skipped']}")
    for label, entry in result.get("load_memory", {}).items():
        if "after_load" in entry:
            lines.append(
                f"loading bf16, {label}: peak {entry['after_load'].get('VmHWM_mb', 0):.0f} MB after loading, "
                f"{entry['after_forward'].get('VmHWM_mb', 0):.0f} MB after a first 1 s clip "
                f"(imports {entry['before_load'].get('VmHWM_mb', 0):.0f} MB), {entry['load_s']:.1f} s"
            )
    for layer, entry in result.get("truncation", {}).items():
        lines.append(
            f"reading layer {layer}: {entry['layers_run']} layers run, {entry['fraction_of_all_layers']:.2f}x the time"
        )
    for name, http in result.get("http", {}).items():
        single = http["single_client"]["latency"]
        lines.append(
            f"HTTP {name}: ready in {http['start_to_ready_s']:.1f} s, peak RSS {http['memory'].get('VmHWM_mb', 0):.0f} MB; "
            f"1 client p50 {single['p50_s']:.3f} s p95 {single['p95_s']:.3f} p99 {single['p99_s']:.3f} "
            f"vs forward {http['forward_s']['median_s']:.3f} s ({http['single_client_p50_over_forward']:.2f}x)"
        )
        for clients, entry in http["concurrency"].items():
            lat = entry["latency"]
            lines.append(
                f"  {clients:>2} clients: {entry['throughput_clips_per_s']:.2f} clips/s, p50 {lat.get('p50_s', float('nan')):.3f} s, "
                f"p99 {lat.get('p99_s', float('nan')):.3f} s, mean batch {entry['mean_batch_size'] or 0:.1f}, "
                f"failed {entry['failed']}/{entry['requests']}"
            )
        around = http["best_batched_clips_per_s_around_load"]
        lines.append(
            f"  best batched in-process (batch {around['batch_size']}) {around['clips_per_s']:.2f} clips/s timed around "
            f"the load ({http['best_batched_clips_per_s']:.2f} earlier); ratio "
            f"{http['throughput_ratio_at_max_clients']:.2f} ({http['throughput_ratio_vs_earlier_best']:.2f} vs "
            f"earlier); p99 bound {http['p99_bound_s']:.2f} s"
        )
    for target in result.get("targets", []):
        state = {True: "MET", False: "NOT MET", None: "n/a"}[target["met"]]
        lines.append(
            f"[{state}] {target['name']}: {target['target']}; measured {json.dumps(target['measured'], default=_round)}"
        )
    return lines


def _round(value: Any) -> Any:
    return round(float(value), 4)


# -- command line -----------------------------------------------------------------------------


def _floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m service.benchmark",
        description="Measure the project's inference path against the naive baseline (writes JSON).",
    )
    parser.add_argument(
        "--model",
        default="large",
        help="large (HuBERT-large architecture, random weights; "
        "default), tiny (smoke test), or a folder written by save_pretrained",
    )
    parser.add_argument(
        "--layer", type=int, default=None, help="hidden state the bundle reads (default: last)"
    )
    parser.add_argument(
        "--variants",
        type=_names,
        default=None,
        help=f"comma-separated, from {', '.join(ALL_VARIANTS)} (default: all available)",
    )
    parser.add_argument("--seconds", type=_floats, default=None, help="clip lengths (default 1,2.5,10)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed rounds per clip length (default 7; quick 2)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="compute threads (default: the CPUs available)"
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where ONNX exports and converted weights are cached (default: a temporary "
        "folder, as the random model is new each run)",
    )
    parser.add_argument(
        "--accuracy-clips", type=int, default=None, help="clips compared with fp32 (default 12; quick 4)"
    )
    parser.add_argument(
        "--agreement-clips",
        type=int,
        default=0,
        help="RAVDESS clips (needs SER_TEST_DATA) for the prediction agreement of each variant with fp32, "
        "speaker-independent (default 0: not measured; 240 takes minutes per variant)",
    )
    parser.add_argument("--skip-http", action="store_true", help="leave out the HTTP measurements")
    parser.add_argument(
        "--http-variants",
        type=_names,
        default=None,
        help="variants served over HTTP (default: the default variant)",
    )
    parser.add_argument(
        "--http-requests", type=int, default=None, help="single-client requests (default 30; quick 4)"
    )
    parser.add_argument(
        "--concurrency", type=_ints, default=[1, 4, 16], help="concurrent clients (default 1,4,16)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="few repeats (a smoke test; use with --model tiny)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> Settings:
    quick = bool(args.quick)
    variants = args.variants
    if variants is None:
        variants = [v for v in ALL_VARIANTS if not v.startswith("onnx") or _has_onnxruntime()]
    variants = [default_variant_name() if v == "default" else v for v in variants]
    for name in variants:
        Variant.parse(name)
    http_variants = [
        default_variant_name() if v == "default" else v for v in (args.http_variants or ["default"])
    ]
    for name in http_variants:
        Variant.parse(name)
        if name not in variants:
            variants.append(name)
    return Settings(
        model=args.model,
        layer=args.layer,
        variants=variants,
        seconds=args.seconds or ([1.0, 2.5] if quick else [1.0, 2.5, 10.0]),
        repeats=args.repeats or (2 if quick else 7),
        threads=args.threads,
        cache_dir=args.cache_dir,
        accuracy_clips=args.accuracy_clips or (4 if quick else 12),
        agreement_clips=max(0, int(args.agreement_clips)),
        skip_http=bool(args.skip_http),
        http_variants=http_variants,
        http_requests=args.http_requests or (4 if quick else 30),
        concurrency=args.concurrency,
        batch_sizes=[1, 2, 4] if quick else [1, 2, 4, 8],
        peak_size=1024 if quick else 4096,
        quick=quick,
    )


def _has_onnxruntime() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def load_peak(argv: list[str]) -> int:
    """Load an encoder in bf16 in this (fresh) process, run one 1 s clip, and print its memory as JSON.

    ``--how transformers``: ``from_pretrained(..., dtype=bfloat16)`` straight from the fp32 checkpoint;
    ``--how project``: ``build_backbone(..., dtype="bf16")`` (the cached bf16 copy, converted first if absent).
    """
    parser = argparse.ArgumentParser(prog="python -m service.benchmark load-peak")
    parser.add_argument("--model", type=Path, required=True)
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
        from shared.backbones import BackboneSpec, build_backbone

        spec = BackboneSpec(kind="hubert", model=str(args.model))
        backbone = build_backbone(spec, dtype="bf16", cache_dir=args.cache_dir, local_files_only=True)
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


def measure_load_peaks(folder: Path, cache_dir: Path, quick: bool) -> dict[str, Any]:
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
        command = [sys.executable, "-m", "service.benchmark", "load-peak", "--model", str(folder)]
        command += ["--how", how, "--cache-dir", str(scratch)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            out[label] = {"error": done.stderr[-1000:]}
            continue
        out[label] = json.loads(done.stdout.strip().splitlines()[-1])
    shutil.rmtree(scratch, ignore_errors=True)
    return out


def serve(argv: list[str]) -> int:
    """The HTTP server the benchmark measures: the service's own app, for one variant."""
    parser = argparse.ArgumentParser(prog="python -m service.benchmark serve")
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--variant", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    import uvicorn

    from service.app import create_app
    from service.memory import keep_freed_memory
    from service.settings import ServiceSettings

    variant = Variant.parse(args.variant)
    if variant.backend == "naive":
        raise SystemExit("the naive baseline is not served; choose a torch or onnx variant")
    # The service's own loader; SER_CACHE_DIR and SER_ONNX_CACHE (set by start_server) say where the
    # converted weights and ONNX exports are.
    settings = ServiceSettings(
        bundle=args.bundle,
        port=args.port,
        device="cpu",
        dtype=cast(Any, variant.dtype if variant.backend == "torch" else "fp32"),
        backend=cast(Any, variant.backend),
        torch_threads=args.threads or 0,
        hf_offline=True,
        log_level="WARNING",
    )
    if settings.keep_freed_memory:
        keep_freed_memory()  # as python -m service does, before any thread starts
    app = create_app(settings)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_config=None, log_level="warning", access_log=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        return serve(argv[1:])
    if argv[:1] == ["load-peak"]:
        return load_peak(argv[1:])
    args = parse_args(argv)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    cfg = settings_from_args(args)
    cfg.command = " ".join(["python -m service.benchmark", *argv])

    def say(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    result = run_benchmark(cfg, say)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    for line in summary_lines(result):
        print(line)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
