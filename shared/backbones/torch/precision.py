"""Half-precision weights with full-precision activations, and bias correction for the rounded weights.

How the torch backend runs an encoder in ``bf16`` (or ``fp16`` on CUDA):

- Every ``Linear`` and ``Conv1d`` keeps its weight in half precision, so the matrix products run on the
  fast units and the weights take half the memory. Its input is cast to half precision for the product;
  the bias is added in fp32 and the output is fp32.
- Everything else stays fp32: the residual stream, layer norms, activations, attention softmax and the
  waveform itself. These cost little time but, held in bf16, they add noise to every clip.
- Rounding a weight matrix ``W`` to bf16 shifts each layer's output by ``(W - round(W)) @ x``. Its mean
  over speech, ``(W - round(W)) @ mean(x)``, is the same for every clip: measured on HuBERT-large, it is
  most of the difference between bf16 and fp32 embeddings. ``correct_biases`` adds it back to each
  layer's fp32 bias, with ``mean(x)`` measured on generated speech-like signals (bias correction, as in
  post-training quantisation). The README's speed section has the measured errors with and without it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from shared.backbones.checkpoint import SafetensorsReader

log = logging.getLogger(__name__)


class HalfWeightLinear(nn.Module):
    """``y = x @ W.T + b``: ``W`` in half precision, ``x`` [..., in], ``b`` and ``y`` [..., out] in fp32."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(bias.float(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A half-precision product plus an fp32 bias promotes to fp32 in the same kernel.
        return torch.add(F.linear(x.to(self.weight.dtype), self.weight), self.bias)


class HalfWeightConv1d(nn.Module):
    """A 1-D convolution with its weight in half precision; input ``[B, C_in, T]``, bias and output fp32."""

    def __init__(self, conv: nn.Conv1d, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(bias.float(), requires_grad=False)
        self.stride, self.padding, self.dilation, self.groups = (
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
        )
        if conv.padding_mode != "zeros":
            raise ValueError(f"padding mode {conv.padding_mode!r} is not supported")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv1d(
            x.to(self.weight.dtype), self.weight, None, self.stride, self.padding, self.dilation, self.groups
        )
        return torch.add(y, self.bias[:, None])


HalfWeightModule = HalfWeightLinear | HalfWeightConv1d

#: A half-precision convolution further than this from the fp32 convolution of the same rounded weights
#: (relative to its output) is a kernel that gets the shape wrong: rounding alone stays near 2^-8.
HALF_KERNEL_TOLERANCE = 0.05


def half_conv_error(conv: nn.Conv1d, half: HalfWeightConv1d) -> float:
    """How far ``half`` is from an fp32 convolution with its own (rounded) weights, on a random probe.

    Some CPU kernels compute some shapes wrong in bf16 (grouped convolutions with few channels per group
    on AMX, for one), and nothing else would tell.
    """
    generator = torch.Generator().manual_seed(0)
    frames = max(64, 4 * int(conv.kernel_size[0]))
    x = torch.randn(1, conv.in_channels, frames, generator=generator).to(half.weight.device)
    with torch.no_grad():
        got = half(x)
        want = F.conv1d(
            x, half.weight.float(), half.bias, half.stride, half.padding, half.dilation, half.groups
        )
    return float((got - want).norm() / want.norm().clamp_min(1e-12))


def convert_to_half_weights(
    model: nn.Module, dtype: torch.dtype
) -> tuple[dict[str, HalfWeightModule], set[str]]:
    """Give every ``Linear`` and ``Conv1d`` of ``model`` a half-precision weight, the rest fp32 (in place).

    Weight-norm parametrisations are folded into a plain weight first (the encoder is frozen, so the
    norm need not be recomputed on every call). Modules without a bias get a zero fp32 bias, which
    ``correct_biases`` may fill. A convolution that this machine's half-precision kernel computes wrong
    (``half_conv_error`` over ``HALF_KERNEL_TOLERANCE``) keeps an fp32 weight, with a warning.

    Returns:
        the replaced modules by name, and the names of the weights that came from folding (their
        half-precision values are best recomputed from the checkpoint: see ``restore_from_checkpoint``).
    """
    from torch.nn.utils import parametrize

    replaced: dict[str, HalfWeightModule] = {}
    folded: set[str] = set()
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear | nn.Conv1d):
                continue
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if parametrize.is_parametrized(child, "weight"):
                parametrize.remove_parametrizations(child, "weight", leave_parametrized=True)
                folded.add(f"{name}.weight")
            weight = child.weight.detach().to(dtype)
            out_features = weight.shape[0]
            bias = child.bias.detach() if child.bias is not None else torch.zeros(out_features)
            bias = bias.to(device=weight.device, dtype=torch.float32)
            half: HalfWeightModule
            if isinstance(child, nn.Linear):
                half = HalfWeightLinear(weight, bias)
            else:
                half = HalfWeightConv1d(child, weight, bias)
                error = half_conv_error(child, half)
                if error > HALF_KERNEL_TOLERANCE:
                    log.warning(
                        "the %s convolution kernel computes %s wrong on this machine (relative error %.2g): "
                        "keeping its weights in fp32",
                        str(dtype).removeprefix("torch."),
                        name,
                        error,
                    )
                    continue
            setattr(parent, child_name, half)
            replaced[name] = half
    for module in model.modules():
        if isinstance(module, HalfWeightLinear | HalfWeightConv1d):
            continue
        for key, param in list(module.named_parameters(recurse=False)):
            if param.is_floating_point() and param.dtype != torch.float32:
                setattr(module, key, nn.Parameter(param.detach().float(), requires_grad=False))
        for key, buf in list(module.named_buffers(recurse=False)):
            if buf is not None and buf.is_floating_point():
                module._buffers[key] = buf.float()
    return replaced, folded


class CheckpointTensors(SafetensorsReader):
    """A checkpoint's own tensor values as fp32, by the model's parameter names, read one at a time
    (prefixes and weight-norm pairs handled as in ``SafetensorsReader``)."""

    def get(self, name: str) -> torch.Tensor | None:
        """The fp32 value of parameter ``name``, or None when the checkpoint does not hold it."""
        tensor = super().get(name)
        return None if tensor is None else tensor.float()


def restore_from_checkpoint(model: nn.Module, folded: set[str], exact: CheckpointTensors) -> int:
    """Replace fp32 parameters (rounded when the model was loaded in half precision) and folded weights
    with the checkpoint's own values. Returns how many parameters were restored."""
    restored = 0
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dtype != torch.float32 and name not in folded:
                continue
            value = exact.get(name)
            if value is None or value.shape != param.shape:
                continue
            param.copy_(value.to(param.dtype))
            restored += 1
    return restored


def mean_inputs(modules: dict[str, HalfWeightModule], run: Callable[[], None]) -> dict[str, torch.Tensor]:
    """The mean input of each module over everything ``run()`` feeds the model: ``[in_features]`` fp64
    for a linear layer (mean over all positions), ``[in_channels]`` for a convolution (over batch and time)."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def recorder(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def record(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach().double()
            if isinstance(module, HalfWeightLinear):
                total, n = x.reshape(-1, x.shape[-1]).sum(0), x.numel() // x.shape[-1]
            else:
                total, n = x.sum(dim=(0, 2)), x.numel() // x.shape[1]
            sums[name] = sums[name] + total if name in sums else total
            counts[name] = counts.get(name, 0) + n

        return record

    hooks = [module.register_forward_pre_hook(recorder(name)) for name, module in modules.items()]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return {name: sums[name] / counts[name] for name in sums}


def correct_biases(
    modules: dict[str, HalfWeightModule], means: dict[str, torch.Tensor], exact: CheckpointTensors
) -> int:
    """Add ``(W - round(W)) @ mean_input`` to each module's fp32 bias. Returns how many were corrected.

    A module without a mean input (never run) or without its weight in the checkpoint is left as is.
    """
    corrected = 0
    with torch.no_grad():
        for name, module in modules.items():
            mean = means.get(name)
            weight = exact.get(f"{name}.weight")
            if mean is None or weight is None or weight.shape != module.weight.shape:
                continue
            delta = weight - module.weight.detach().float().cpu()
            mean = mean.float().cpu()
            if isinstance(module, HalfWeightLinear):
                shift = delta @ mean
            else:
                out_channels, in_per_group, _ = delta.shape
                groups = module.groups
                per_channel = delta.sum(dim=2).reshape(groups, out_channels // groups, in_per_group)
                shift = (per_channel * mean.reshape(groups, 1, in_per_group)).sum(dim=2).reshape(-1)
            module.bias.add_(shift.to(module.bias.device, torch.float32))
            corrected += 1
    return corrected


def full_precision_state(model: nn.Module, folded: set[str]) -> dict[str, torch.Tensor]:
    """What ``save``/``load`` of a converted model needs beyond its half-precision weights: every fp32
    parameter (corrected biases, norms) and the folded weights."""
    return {
        name: param.detach().cpu().contiguous()
        for name, param in model.named_parameters()
        if param.dtype == torch.float32 or name in folded
    }


def load_full_precision_state(model: nn.Module, folded: set[str], path: Path) -> bool:
    """Load a state written from ``full_precision_state``; False (nothing changed) when it does not match."""
    from safetensors.torch import load_file

    try:
        saved = load_file(str(path))
    except Exception as exc:  # a truncated or foreign file is rebuilt, not trusted
        log.warning("ignoring %s: %s", path, exc)
        return False
    params = dict(model.named_parameters())
    expected = full_precision_state(model, folded)
    if saved.keys() != expected.keys() or any(saved[k].shape != expected[k].shape for k in saved):
        log.warning("ignoring %s: it was written for a different model", path)
        return False
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value.to(params[name].dtype))
    return True
