"""The targets, whether a run meets them, and the printed summary."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.cli import Settings

# Targets (ratios measured in one run).
TARGET_DEFAULT_SPEEDUP = 2.0
TARGET_DEFAULT_ERROR = 0.02
TARGET_INT8_SPEEDUP = 3.2
TARGET_INT8_ERROR = 0.03
TARGET_INT8_AGREEMENT = 0.97
TARGET_HTTP_OVERHEAD = 1.15
TARGET_THROUGHPUT_RATIO = 0.9
TARGET_BF16_PEAK_MB = 1200.0


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
    if "onnx-int8" in accuracy:
        error = accuracy["onnx-int8"]["relative_error_mean"]
        add(
            "onnx-int8 embedding error",
            f"<= {TARGET_INT8_ERROR:.0%} of inter-clip distance",
            error,
            error <= TARGET_INT8_ERROR,
        )
    agreeing = result.get("prediction_agreement", {}).get("variants", {}).get("onnx-int8")
    if agreeing is not None:
        same = agreeing["same_prediction_as_reference"]
        add(
            "onnx-int8 same predictions as fp32",
            f">= {TARGET_INT8_AGREEMENT:.0%}",
            same,
            same >= TARGET_INT8_AGREEMENT,
        )
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
    peaks = {name: http.get("memory", {}).get("VmHWM_mb") for name, http in result.get("http", {}).items()}
    if peaks.get("onnx-int8") is not None and peaks.get("torch-bf16") is not None:
        add(
            "onnx-int8 server peak memory (VmHWM)",
            "<= torch-bf16's",
            {"onnx-int8": peaks["onnx-int8"], "torch-bf16": peaks["torch-bf16"]},
            peaks["onnx-int8"] <= peaks["torch-bf16"],
        )
    return targets


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
        if "p50_s" not in single:
            failures = http["single_client"].get("failures") or ["no response"]
            lines.append(f"HTTP {name}: every single-client request failed, e.g. {failures[0]}")
            continue
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
