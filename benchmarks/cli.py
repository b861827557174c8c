"""The command line: flags, the run in order, the JSON written and the summary printed; and the internal
``serve`` and ``load-peak`` subcommands."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.http import measure_http, serve
from benchmarks.measure import (
    count_gflop,
    load_peak,
    machine_facts,
    measure_accuracy,
    measure_batched,
    measure_load_peaks,
    measure_peak,
    measure_prediction_agreement,
    measure_truncation,
    time_variants,
)
from benchmarks.report import evaluate_targets, summary_lines
from benchmarks.variants import (
    ALL_VARIANTS,
    HUB_STANDIN_COMMIT,
    HUB_STANDIN_ID,
    NaiveEncoder,
    Variant,
    build_variant,
    default_variant_name,
    make_model,
    save_as_hub_download,
)

log = logging.getLogger(__name__)

DEFAULT_OUT = Path("bench-results/benchmark.json")
#: With a ``*-hub`` model, the torch variants are also timed from the folder, under this prefix.
FOLDER_PREFIX = "folder:"


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
    command: str = "python -m benchmarks"


def run_benchmark(cfg: Settings, say: Callable[[str], None]) -> dict[str, Any]:
    import torch

    from shared.backbones import BackboneSpec
    from shared.backbones.runtime import configure_torch_threads

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
        location = str(folder)
        if cfg.model in ("large", "tiny", "large-hub", "tiny-hub"):
            kind = cfg.model.removesuffix("-hub")
            if cfg.model.endswith("-hub"):
                # Read when the hub libraries are imported (next, by make_model): set them first. The
                # service and load-peak processes inherit them.
                os.environ["HF_HUB_CACHE"] = str(work / "hub")
                os.environ["HF_HUB_OFFLINE"] = "1"
            say(f"saving a random-weight HuBERT ({kind}) to {folder}")
            result["model"] = make_model(kind, folder)
            if cfg.model.endswith("-hub"):
                say(f"laying it out as the hub download of {HUB_STANDIN_ID} (pytorch_model.bin, old names)")
                save_as_hub_download(folder, work / "hub", HUB_STANDIN_ID)
                location = HUB_STANDIN_ID
                result["model"]["hub_standin"] = {"id": HUB_STANDIN_ID, "commit": HUB_STANDIN_COMMIT}
        else:
            folder = Path(cfg.model)
            location = str(folder)
            result["model"] = {"kind": "folder", "path": str(folder)}
        spec = BackboneSpec(kind="hubert", model=location, layer=cfg.layer)
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
        if location != str(folder):
            # The same weights from the folder they were saved to, timed in the same rounds: what the
            # hub path costs or saves, free of this machine's drift between runs.
            folder_spec = BackboneSpec(kind="hubert", model=str(folder), layer=cfg.layer)
            for variant in [v for v in variants if v.backend == "torch"]:
                name = f"{FOLDER_PREFIX}{variant.name}"
                say(f"loading {name}")
                start = time.perf_counter()
                backbones[name] = build_variant(variant, folder, folder_spec, cfg.cache_dir, cfg.threads)
                result["load_s"][name] = time.perf_counter() - start
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
        result["load_memory"] = measure_load_peaks(location, cfg.cache_dir, cfg.quick)
        if location != str(folder):
            say("the same from the folder")
            result["load_memory_folder"] = measure_load_peaks(folder, cfg.cache_dir / "folder", cfg.quick)

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
                    variant, backbones[name], work, cfg, result["batched"][name], say
                )
                twin = f"{FOLDER_PREFIX}{name}"
                if twin in backbones:
                    say(f"serving {twin} over HTTP")
                    (work / "folder-http").mkdir(exist_ok=True)
                    result["batched"][twin] = measure_batched(backbones[twin], cfg)
                    result["http"][twin] = measure_http(
                        variant, backbones[twin], work / "folder-http", cfg, result["batched"][twin], say
                    )
        result["load_average_end"] = list(os.getloadavg())
        result["targets"] = evaluate_targets(result, cfg)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def comma_names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure the project's inference path against the naive baseline (writes JSON).",
    )
    parser.add_argument(
        "--model",
        default="large",
        help="large (HuBERT-large architecture, random weights; default), tiny (smoke test), large-hub or "
        "tiny-hub (the same, saved as a legacy hub download and read by hub id offline), or a folder "
        "written by save_pretrained",
    )
    parser.add_argument(
        "--layer", type=int, default=None, help="hidden state the bundle reads (default: last)"
    )
    parser.add_argument(
        "--variants",
        type=comma_names,
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
    parser.add_argument(
        "--int8-fp32-scopes",
        default=None,
        help="comma-separated graph scopes whose products the int8 export keeps fp32, for the variants "
        "run in this process (default: the recipe's, shared.backbones.onnx.export.FP32_SCOPES; '' for "
        "none); each choice is exported anew",
    )
    parser.add_argument("--skip-http", action="store_true", help="leave out the HTTP measurements")
    parser.add_argument(
        "--http-variants",
        type=comma_names,
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        return serve(argv[1:])
    if argv[:1] == ["load-peak"]:
        return load_peak(argv[1:])
    args = parse_args(argv)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    cfg = settings_from_args(args)
    cfg.command = " ".join(["python -m benchmarks", *argv])
    if args.int8_fp32_scopes is not None:
        from shared.backbones.onnx import export

        export.FP32_SCOPES = tuple(s for s in args.int8_fp32_scopes.split(",") if s)

    def say(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    result = run_benchmark(cfg, say)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    for line in summary_lines(result):
        print(line)
    print(f"wrote {args.out}")
    return 0
