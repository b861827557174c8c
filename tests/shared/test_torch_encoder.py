"""The torch backend's cached half-precision weights: converted once, holding the checkpoint's values,
rebuilt when damaged, skipped when the cache cannot be written."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shared.backbones import BackboneSpec, EncoderOptions, build_backbone
from shared.backbones.checkpoint import read_safetensors_header
from shared.backbones.torch import encoder as torch_encoder


def safetensors_keys(path) -> dict[str, str]:
    header, _ = read_safetensors_header(path)
    return {name: info["dtype"] for name, info in header.items() if name != "__metadata__"}


@pytest.mark.parametrize("layer", [None, 1])
def test_bf16_weights_are_converted_once_and_hold_the_checkpoints_values(
    tiny_hubert_dir, waves, tmp_path, layer
):
    from safetensors.torch import load_file

    spec = BackboneSpec(kind="hubert", model=str(tiny_hubert_dir), layer=layer)
    backbone = build_backbone(spec, EncoderOptions(dtype="bf16", cache_dir=tmp_path))
    (entry,) = (tmp_path / "weights").iterdir()
    keys = safetensors_keys(entry / "model.safetensors")
    assert set(keys.values()) == {"BF16"}
    kept = 3 if layer is None else 1
    assert not any(f"encoder.layers.{i}." in name for name in keys for i in range(kept, 3))

    source = load_file(str(tiny_hubert_dir / "model.safetensors"))
    # The torch backend runs the conv stack one utterance at a time through a wrapper module.
    ours = {
        k.replace("feature_extractor.encoder.", "feature_extractor."): v
        for k, v in backbone.model.state_dict().items()
    }
    matrices = {
        k
        for k, v in source.items()
        if v.dim() >= 2
        and "parametrizations" not in k
        and not any(f"layers.{i}." in k for i in range(kept, 3))
    }
    for name in matrices:
        # Matrix weights: the checkpoint's values rounded to bf16.
        assert ours[name].dtype == torch.bfloat16 and torch.equal(
            ours[name], source[name].to(torch.bfloat16)
        ), name
    for name, value in ours.items():
        if name.endswith("layer_norm.weight") or name.endswith("layer_norm.bias"):
            assert value.dtype == torch.float32 and torch.equal(value, source[name]), (
                name
            )  # exact, not rounded
        if name.endswith(".bias") and "layer_norm" not in name:
            assert value.dtype == torch.float32, name  # fp32, bias-corrected
    # The weight-normed positional convolution is folded, from the checkpoint's fp32 values.
    g = source["encoder.pos_conv_embed.conv.parametrizations.weight.original0"]
    v = source["encoder.pos_conv_embed.conv.parametrizations.weight.original1"]
    folded = torch._weight_norm(v, g, 2).to(torch.bfloat16)
    assert torch.equal(ours["encoder.pos_conv_embed.conv.weight"], folded)
    assert backbone.fingerprint["half_precision"] == torch_encoder.HALF_PRECISION_METHOD
    assert "half_precision" not in build_backbone(spec).fingerprint

    files = [entry / "model.safetensors", entry / torch_encoder.FULL_PRECISION_FILE]
    written = [f.stat().st_mtime_ns for f in files]
    again = build_backbone(spec, EncoderOptions(dtype="bf16", cache_dir=tmp_path))
    assert [f.stat().st_mtime_ns for f in files] == written
    np.testing.assert_array_equal(again.embed_batch(waves), backbone.embed_batch(waves))


def test_a_damaged_corrected_parameter_file_is_rebuilt(tiny_hubert_dir, waves, tmp_path):
    spec = BackboneSpec(kind="hubert", model=str(tiny_hubert_dir))
    expected = build_backbone(spec, EncoderOptions(dtype="bf16", cache_dir=tmp_path)).embed_batch(waves)
    (entry,) = (tmp_path / "weights").iterdir()
    saved = entry / torch_encoder.FULL_PRECISION_FILE
    saved.write_bytes(saved.read_bytes()[:100])
    np.testing.assert_array_equal(
        build_backbone(spec, EncoderOptions(dtype="bf16", cache_dir=tmp_path)).embed_batch(waves), expected
    )
    assert saved.stat().st_size > 100


def test_bf16_without_a_writable_cache_loads_directly(tiny_hubert_dir, waves, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    spec = BackboneSpec(kind="hubert", model=str(tiny_hubert_dir))
    backbone = build_backbone(spec, EncoderOptions(dtype="bf16", cache_dir=blocker))
    cached = build_backbone(spec, EncoderOptions(dtype="bf16", cache_dir=tmp_path / "cache"))
    np.testing.assert_array_equal(backbone.embed_batch(waves), cached.embed_batch(waves))
