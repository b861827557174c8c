"""ONNX Runtime sessions for the encoder graphs (the ``onnx`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.errors import BackboneError


def require_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackboneError(
            "the ONNX backends need onnxruntime and onnx: pip install 'ser-service[onnx]' "
            "(or onnxruntime onnx), or use backend 'torch'"
        ) from exc
    return onnxruntime


def open_session(path: Path, *, threads: int) -> Any:
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    # Otherwise the worker threads keep spinning on the cores after each run, taking them from request
    # decoding and the event loop (and, in the benchmark, from the variant timed next). Runs themselves
    # take about the same time either way.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise BackboneError(f"ONNX Runtime could not load {path}: {exc}") from exc
