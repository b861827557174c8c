"""``backend="auto"``: what it chooses on each kind of CPU, and why (on the tiny HuBERT)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from shared.backbones import BackboneSpec, EncoderOptions, auto, build_backbone
from shared.backbones.base import precision_of
from shared.backbones.torch.encoder import TorchEncoder


def machine(monkeypatch: pytest.MonkeyPatch, *, bf16: bool, vnni: bool) -> None:
    """Pretend the CPU has (or lacks) bf16 units and int8 dot products."""
    from shared.backbones import runtime

    modules = [auto, runtime]
    if importlib.util.find_spec("onnxruntime") is not None:
        from shared.backbones.onnx import encoder as onnx_encoder

        modules.append(onnx_encoder)
    for module in modules:
        monkeypatch.setattr(module, "cpu_has_fast_bf16", lambda: bf16)
    monkeypatch.setattr(auto, "cpu_has_int8_dot_products", lambda: vnni)


@pytest.fixture
def spec(tiny_hubert_dir):
    return BackboneSpec(kind="hubert", model=str(tiny_hubert_dir))


def options(tmp_path, dtype: str = "auto") -> EncoderOptions:
    return EncoderOptions(backend="auto", dtype=dtype, cache_dir=tmp_path)


def test_bf16_units_choose_torch_in_bf16(spec, tmp_path, monkeypatch):
    machine(monkeypatch, bf16=True, vnni=True)
    backbone = build_backbone(spec, options(tmp_path))
    assert isinstance(backbone, TorchEncoder) and backbone.dtype == "bf16"
    assert precision_of(backbone) == {
        "backend": "torch",
        "dtype": "bf16",
        "reason": "this CPU has bf16 matrix units (AVX-512 BF16 or AMX): torch in bf16",
    }


def test_vnni_without_bf16_chooses_int8_when_it_passes_its_check(spec, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime", reason="the int8 path needs the onnx extra")
    machine(monkeypatch, bf16=False, vnni=True)
    backbone = build_backbone(spec, options(tmp_path))
    assert (backbone.backend, backbone.dtype, backbone.front.dtype) == ("onnx-int8", "int8", "fp32")
    # The check was measured once, at export, and kept beside the graph.
    check = json.loads((backbone.model_path.parent / "check.json").read_text())
    assert check["relative_error"] == backbone.int8_error and 0 < backbone.int8_error <= auto.INT8_ERROR_BAR
    assert "int8 dot products (VNNI) and no bf16 units" in backbone.precision_reason
    assert f"within {100 * backbone.int8_error:.1f}% of fp32" in backbone.precision_reason


def test_int8_that_fails_its_check_falls_back_to_fp32(spec, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime", reason="the int8 path needs the onnx extra")
    machine(monkeypatch, bf16=False, vnni=True)
    monkeypatch.setattr(auto, "INT8_ERROR_BAR", 0.0)
    backbone = build_backbone(spec, options(tmp_path))
    assert isinstance(backbone, TorchEncoder) and backbone.dtype == "fp32"
    assert "% from fp32 (the bar is 0%): torch in fp32" in backbone.precision_reason


def test_without_bf16_or_vnni_torch_runs_in_fp32(spec, tmp_path, monkeypatch):
    machine(monkeypatch, bf16=False, vnni=False)
    backbone = build_backbone(spec, options(tmp_path))
    assert isinstance(backbone, TorchEncoder) and backbone.dtype == "fp32"
    assert backbone.precision_reason == (
        "this CPU has neither bf16 matrix units nor int8 dot products (VNNI): torch in fp32"
    )


def test_without_the_onnx_extra_vnni_machines_run_fp32_and_say_why(spec, tmp_path, monkeypatch):
    machine(monkeypatch, bf16=False, vnni=True)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a)
    )
    backbone = build_backbone(spec, options(tmp_path))
    assert isinstance(backbone, TorchEncoder) and backbone.dtype == "fp32"
    assert "needs the 'onnx' extra, which is not installed" in backbone.precision_reason


def test_a_precision_that_was_set_runs_on_torch_as_set(spec, tmp_path, monkeypatch):
    machine(monkeypatch, bf16=False, vnni=True)
    backbone = build_backbone(spec, options(tmp_path, dtype="bf16"))
    assert isinstance(backbone, TorchEncoder) and backbone.dtype == "bf16"
    assert backbone.precision_reason == "the dtype setting asks for bf16: torch in bf16"
    named = build_backbone(spec, EncoderOptions(backend="torch", cache_dir=tmp_path))
    assert named.precision_reason == "the backend setting is 'torch' and the dtype 'fp32'"
