"""Half-precision weights with fp32 activations and bias correction (``shared.backbones.torch.precision``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from support import relative_error, synthetic_clip
from torch import nn

from shared.backbones import BackboneSpec, EncoderOptions, build_backbone
from shared.backbones.torch import precision
from shared.backbones.torch.precision import (
    CheckpointTensors,
    HalfWeightConv1d,
    HalfWeightLinear,
    convert_to_half_weights,
    correct_biases,
    full_precision_state,
    load_full_precision_state,
    mean_inputs,
)


class Layers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(8, 12, kernel_size=3, stride=2, padding=1, groups=4, bias=False)
        self.norm = nn.LayerNorm(12)
        self.linear = nn.Linear(12, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, 8, T] -> [B, T', 6]
        return self.linear(self.norm(self.conv(x).transpose(1, 2)))


def test_a_convolution_the_half_kernel_gets_wrong_keeps_fp32_weights(monkeypatch, caplog):
    torch.manual_seed(0)
    model = Layers().eval()
    sound = precision.half_conv_error(
        model.conv, HalfWeightConv1d(model.conv, model.conv.weight.bfloat16(), torch.zeros(12))
    )
    assert sound < precision.HALF_KERNEL_TOLERANCE  # rounding alone
    x = torch.randn(2, 8, 40)
    with torch.inference_mode():
        expected = model(x)
    monkeypatch.setattr(precision, "half_conv_error", lambda conv, half: 1.1)  # as a broken kernel measures
    with caplog.at_level("WARNING", logger="shared.backbones.torch.precision"):
        replaced, _ = convert_to_half_weights(model, torch.bfloat16)
    assert set(replaced) == {"linear"}
    assert isinstance(model.conv, nn.Conv1d) and model.conv.weight.dtype == torch.float32
    assert (
        "computes conv wrong on this machine" in caplog.text and "keeping its weights in fp32" in caplog.text
    )
    with torch.inference_mode():
        torch.testing.assert_close(model(x), expected, rtol=0.05, atol=0.05)


def save_checkpoint(model: nn.Module, path: Path, prefix: str = "") -> Path:
    save_file({prefix + k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_half_weight_modules_take_and_give_fp32_around_half_products():
    torch.manual_seed(0)
    model = Layers().eval()
    x = 2.0 + torch.randn(3, 8, 40)
    with torch.inference_mode():
        expected = model(x)
    replaced, folded = convert_to_half_weights(model, torch.bfloat16)
    assert set(replaced) == {"conv", "linear"} and folded == set()
    assert isinstance(model.conv, HalfWeightConv1d) and isinstance(model.linear, HalfWeightLinear)
    assert model.conv.weight.dtype == torch.bfloat16 and model.conv.bias.dtype == torch.float32
    assert not model.conv.bias.any()  # a module without a bias gets a zero one, for the correction
    assert model.norm.weight.dtype == torch.float32
    with torch.inference_mode():
        got = model(x)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0.05, atol=0.05)


def test_bias_correction_removes_the_mean_shift_of_rounded_weights(tmp_path):
    torch.manual_seed(1)
    model = Layers().eval()
    checkpoint = CheckpointTensors([save_checkpoint(model, tmp_path / "model.safetensors")])
    # Inputs with a large common part: rounding the weights shifts every output by about the same amount.
    x = 3.0 + 0.3 * torch.randn(16, 8, 64)
    with torch.inference_mode():
        reference = model.conv(x)
        reference_linear = model.linear(reference.transpose(1, 2))
    replaced, folded = convert_to_half_weights(model, torch.bfloat16)
    with torch.inference_mode():
        before = model.conv(x)
        means = mean_inputs(replaced, lambda: model(x))
    assert set(means) == {"conv", "linear"} and means["conv"].shape == (8,)
    torch.testing.assert_close(means["conv"], x.double().mean(dim=(0, 2)))
    assert correct_biases(replaced, means, checkpoint) == 2
    with torch.inference_mode():
        after = model.conv(x)
        after_linear = model.linear(reference.transpose(1, 2))
    shift_before = (before - reference).mean(dim=(0, 2)).abs().max()
    shift_after = (after - reference).mean(dim=(0, 2)).abs().max()
    assert shift_after < 0.1 * shift_before
    linear_shift = (after_linear - reference_linear).mean(dim=(0, 1)).abs().max()
    assert linear_shift < 1e-3


@pytest.mark.parametrize("prefix", ["", "hubert."])
@pytest.mark.parametrize("style", ["parametrizations", "weight_g"])
def test_checkpoint_values_are_found_by_model_name_with_weight_norm_folded(tmp_path, prefix, style):
    torch.manual_seed(2)
    conv = nn.utils.parametrizations.weight_norm(
        nn.Conv1d(8, 8, kernel_size=5, groups=2), name="weight", dim=2
    )
    state = {f"pos.{k}": v for k, v in conv.state_dict().items()}
    if style == "weight_g":  # the older checkpoint naming
        state = {
            k.replace("parametrizations.weight.original0", "weight_g").replace(
                "parametrizations.weight.original1", "weight_v"
            ): v
            for k, v in state.items()
        }
    path = tmp_path / "model.safetensors"
    save_file({prefix + k: v.contiguous() for k, v in state.items()}, str(path))
    tensors = CheckpointTensors([path])
    torch.testing.assert_close(tensors.get("pos.weight"), conv.weight.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(tensors.get("pos.bias"), conv.bias.detach())
    assert tensors.get("pos.missing") is None


def test_the_saved_fp32_state_loads_back_and_a_foreign_one_is_refused(tmp_path):
    torch.manual_seed(3)
    model = Layers()
    convert_to_half_weights(model, torch.bfloat16)
    with torch.no_grad():
        model.linear.bias.add_(0.125)
    state = full_precision_state(model, set())
    assert set(state) == {"conv.bias", "norm.weight", "norm.bias", "linear.bias"}
    save_file(state, str(tmp_path / "state.safetensors"))

    fresh = Layers()
    fresh.load_state_dict(Layers().state_dict())
    convert_to_half_weights(fresh, torch.bfloat16)
    assert load_full_precision_state(fresh, set(), tmp_path / "state.safetensors")
    assert torch.equal(fresh.linear.bias, model.linear.bias)

    other = nn.Sequential(nn.Linear(4, 4))
    convert_to_half_weights(other, torch.bfloat16)
    assert not load_full_precision_state(other, set(), tmp_path / "state.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    assert not load_full_precision_state(fresh, set(), tmp_path / "broken.safetensors")


def test_bf16_encoder_is_closer_to_fp32_than_plain_bf16(tiny_hubert_dir, tmp_path):
    spec = BackboneSpec(kind="hubert", model=str(tiny_hubert_dir))
    labels = ["happy", "sad", "angry", "fear", "neutral", "disgust"]
    waves = [synthetic_clip(label, 0.8 + 0.3 * i, seed=i) for i, label in enumerate(labels)]
    fp32 = build_backbone(spec)
    reference = fp32.embed_batch(waves)
    ours = build_backbone(spec, EncoderOptions(dtype="bf16", cache_dir=tmp_path)).embed_batch(waves)

    # Plain bf16: the whole model and its input cast to bf16.
    plain_model = fp32.readout.to(torch.bfloat16)

    def plain(batch: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(torch.bfloat16)
            mask_t = None if mask is None else torch.from_numpy(mask)
            return plain_model(x, mask_t).float().numpy()

    fp32._run = plain  # type: ignore[method-assign]
    plain_error = relative_error(reference, fp32.embed_batch(waves))
    our_error = relative_error(reference, ours)
    assert our_error < 0.75 * plain_error and our_error < 0.015, (our_error, plain_error)
