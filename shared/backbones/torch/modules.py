"""HuBERT and wav2vec 2.0 encoders in plain torch, loaded straight from safetensors files.

The torch backend runs these modules instead of transformers' ``HubertModel``: the same computation
(tests compare every hidden state with transformers'), with parameter names that match the
checkpoints', and three things serving needs:

- Memory. Importing transformers' model code brings in much of torch's compiler and distributed
  stacks (see the README's speed section for the memory it costs); this module needs none of it. Weights are read
  tensor by tensor into their final precision, so loading never holds a second copy of the model.
- Only the hidden states read are computed: the layers above are never built, and no hidden state is
  kept that the readout does not use.
- The convolutional feature encoder runs one utterance at a time (its activations are the largest of
  the forward pass; see ``FeatureEncoder``).

Architectures outside what is written here (WavLM's relative position bias, conformer layers,
adapters, a batch-norm positional convolution) are left to transformers: ``unsupported_reason`` says
why a config is not handled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from shared.backbones.base import LAST_HIDDEN_STATE, kept_layer_count
from shared.backbones.checkpoint import SafetensorsReader


def unsupported_reason(config: Any) -> str | None:
    """Why this module cannot run an encoder with ``config`` (a transformers config), or None if it can."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ("hubert", "wav2vec2"):
        return f"model type {model_type!r} (handled here: hubert, wav2vec2)"
    checks = {
        "hidden_act": getattr(config, "hidden_act", None) == "gelu",
        "feat_extract_activation": getattr(config, "feat_extract_activation", None) == "gelu",
        "feat_extract_norm": getattr(config, "feat_extract_norm", None) in ("layer", "group"),
        "conv_pos_batch_norm": not getattr(config, "conv_pos_batch_norm", False),
        "add_adapter": not getattr(config, "add_adapter", False),
    }
    failed = [name for name, ok in checks.items() if not ok]
    return f"unsupported setting(s): {', '.join(failed)}" if failed else None


def kernel_matrix(weight: torch.Tensor) -> torch.Tensor:
    """A ``Conv1d`` weight ``[C_out, C_in, k]`` laid out as ``[k * C_in, C_out]``, row ``j * C_in + c``:
    the matrix that multiplies the ``k`` input frames of an output frame, joined along channels."""
    return weight.detach().permute(2, 1, 0).reshape(-1, weight.shape[0]).contiguous()


def time_major_conv(
    x: torch.Tensor, matrix: torch.Tensor, kernel: int, stride: int, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """A 1-D convolution over time-major ``[B, T, C_in]`` input as one matrix product: ``[B, T', C_out]``.

    Output frame t reads input frames ``t * stride`` to ``t * stride + kernel - 1``; joined along
    channels they are the row that multiplies ``matrix`` (``kernel_matrix`` of the weight, in its
    precision; the input is cast to it). In a contiguous ``[T, C_in]`` tensor those frames are
    ``kernel * C_in`` consecutive values, so a strided view of overlapping rows, copied once, holds every
    row at once. The ONNX exporter cannot write that view with a dynamic length: while exporting, the
    rows are joined from ``kernel`` strided slices instead (the same values in the same order).
    """
    if torch.onnx.is_in_onnx_export():
        taps = [x[:, j : (j - kernel + 1) or None : stride] for j in range(kernel)]
        cols = torch.cat(taps, dim=2)
    else:
        x = x.contiguous()
        batch, frames, channels = x.shape
        out_frames = (frames - kernel) // stride + 1
        cols = x.as_strided((batch, out_frames, kernel * channels), (frames * channels, stride * channels, 1))
    y = torch.matmul(cols.to(matrix.dtype), matrix)
    return y if bias is None else torch.add(y, bias)


def per_utterance(run: Callable[[torch.Tensor], torch.Tensor], input_values: torch.Tensor) -> torch.Tensor:
    """``run`` on each utterance of a ``[B, S]`` batch alone, results joined along the batch.

    For a convolutional feature encoder, whose activations (512 channels at a fifth of the sample rate)
    are the largest tensors of a forward pass: one utterance at a time keeps them in cache and out of
    the peak, which then no longer grows with the batch. Its norms are per utterance, so the result is
    the batched call's.
    """
    if input_values.shape[0] == 1:
        return run(input_values)
    return torch.cat([run(input_values[i : i + 1]) for i in range(input_values.shape[0])])


class ConvLayer(nn.Module):
    """One layer of the feature encoder: convolution, optional norm, GELU. ``[B, C_in, S] -> [B, C, S']``."""

    def __init__(self, config: Any, index: int) -> None:
        super().__init__()
        in_channels = config.conv_dim[index - 1] if index > 0 else 1
        channels = config.conv_dim[index]
        self.conv = nn.Conv1d(
            in_channels,
            channels,
            kernel_size=config.conv_kernel[index],
            stride=config.conv_stride[index],
            bias=config.conv_bias,
        )
        self.norm_kind = (
            config.feat_extract_norm if config.feat_extract_norm == "layer" or index == 0 else None
        )
        self.layer_norm: nn.Module | None = None
        if self.norm_kind == "layer":
            self.layer_norm = nn.LayerNorm(channels, elementwise_affine=True)
        elif self.norm_kind == "group":
            self.layer_norm = nn.GroupNorm(num_groups=channels, num_channels=channels, affine=True)

        self._matrix: torch.Tensor | None = None
        self._matrix_key: tuple[Any, ...] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm_kind == "layer":
            assert self.layer_norm is not None
            x = self.layer_norm(x.transpose(-2, -1)).transpose(-2, -1)
        elif self.norm_kind == "group":
            assert self.layer_norm is not None
            x = self.layer_norm(x)
        return F.gelu(x)

    def forward_time_major(self, x: torch.Tensor) -> torch.Tensor:
        """The same layer over ``[B, T, C_in]`` to ``[B, T', C]`` (``time_major_conv``); per-frame norms only.

        The weight may be in half precision (``precision.HalfWeightConv1d``): the product runs in it, the
        bias and the rest in the input's precision.
        """
        conv = self.conv
        y = time_major_conv(
            x, self._kernel_matrix(), int(conv.weight.shape[2]), int(conv.stride[0]), conv.bias
        )
        y = y.to(x.dtype)  # a half-weight product comes back to the activations' precision
        if self.layer_norm is not None:
            y = self.layer_norm(y)
        return F.gelu(y)

    def _kernel_matrix(self) -> torch.Tensor:
        """``kernel_matrix`` of the weight, remade when the weight changes."""
        weight = self.conv.weight
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device)
        if self._matrix is None or self._matrix_key != key:
            self._matrix = kernel_matrix(weight)
            self._matrix_key = key
        return self._matrix


class FeatureEncoder(nn.Module):
    """The convolutional feature encoder: ``[B, S]`` samples to ``[B, C, T]`` features.

    Its activations (512 channels at a fifth of the sample rate, in fp32) are the largest tensors of a
    forward pass, so it runs one utterance at a time and, where every norm is per frame (layer norm),
    over consecutive pieces of ``chunk_frames`` output frames: each frame depends only on its own
    receptive field (400 samples for HuBERT), so the pieces join into exactly the whole. Memory then
    stays bounded by the piece whatever the input length. Group-norm encoders normalise over time and
    run each utterance whole.

    Layer-norm encoders run each convolution as one matrix product over ``[B, T, C]``
    (``ConvLayer.forward_time_major``), faster than 1-D convolutions and their transposes for the norm,
    in fp32 and in bf16.
    """

    def __init__(self, config: Any, chunk_frames: int = 50) -> None:
        super().__init__()
        self.conv_layers = nn.ModuleList(ConvLayer(config, i) for i in range(len(config.conv_dim)))
        self.hop, self.receptive = 1, 1
        for kernel, stride in zip(config.conv_kernel, config.conv_stride, strict=True):
            self.receptive += (kernel - 1) * self.hop
            self.hop *= stride
        self.chunk_frames = chunk_frames if config.feat_extract_norm == "layer" else 0
        #: Layer-norm encoders run as matrix products over ``[B, T, C]`` (``ConvLayer.forward_time_major``).
        self.time_major = config.feat_extract_norm == "layer"

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self.time_major:
            x = x[:, :, None]
            for layer in self.conv_layers:
                x = cast(ConvLayer, layer).forward_time_major(x)
            return x.transpose(1, 2)
        x = x[:, None]
        for layer in self.conv_layers:
            x = layer(x)
        return x

    def _one(self, x: torch.Tensor) -> torch.Tensor:
        frames = (x.shape[1] - self.receptive) // self.hop + 1
        if not self.chunk_frames or frames <= self.chunk_frames:
            return self._run(x)
        pieces = []
        for first in range(0, frames, self.chunk_frames):
            last = min(first + self.chunk_frames, frames) - 1
            pieces.append(self._run(x[:, first * self.hop : last * self.hop + self.receptive]))
        return torch.cat(pieces, dim=2)

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        return per_utterance(self._one, input_values)


class FeatureProjection(nn.Module):
    """Layer norm (where the config has one) and a linear map to the model width: ``[B, T, C] -> [B, T, H]``."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        has_norm = config.model_type == "wav2vec2" or getattr(config, "feat_proj_layer_norm", True)
        self.layer_norm = nn.LayerNorm(config.conv_dim[-1], eps=config.layer_norm_eps) if has_norm else None
        self.projection = nn.Linear(config.conv_dim[-1], config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return self.projection(x)


class PositionalConvolution(nn.Module):
    """The convolutional relative position embedding: grouped conv (weight norm folded), trim, GELU."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        kernel = config.num_conv_pos_embeddings
        self.conv = nn.Conv1d(
            config.hidden_size,
            config.hidden_size,
            kernel_size=kernel,
            padding=kernel // 2,
            groups=config.num_conv_pos_embedding_groups,
        )
        self.trim = 1 if kernel % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, H] -> [B, T, H]
        y = self.conv(x.transpose(1, 2))
        if self.trim:
            y = y[:, :, : -self.trim]
        return F.gelu(y).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention over valid frames: ``[B, T, H]`` and a ``[B, 1, 1, T]`` bool mask."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        width = config.hidden_size
        self.heads = config.num_attention_heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        batch, frames, width = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, frames, self.heads, width // self.heads).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(batch, frames, width))


class FeedForward(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.intermediate_dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.output_dense = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_dense(F.gelu(self.intermediate_dense(x)))


class EncoderLayer(nn.Module):
    """A transformer layer; ``pre_norm`` (the large models' "stable layer norm") or post-norm."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.pre_norm = bool(config.do_stable_layer_norm)
        self.attention = Attention(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = FeedForward(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.attention(self.layer_norm(x), mask)
            return x + self.feed_forward(self.final_layer_norm(x))
        x = self.layer_norm(x + self.attention(x, mask))
        return self.final_layer_norm(x + self.feed_forward(x))


class Encoder(nn.Module):
    def __init__(self, config: Any, n_layers: int) -> None:
        super().__init__()
        self.pre_norm = bool(config.do_stable_layer_norm)
        self.pos_conv_embed = PositionalConvolution(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(n_layers))


class SpeechEncoder(nn.Module):
    """A HuBERT or wav2vec 2.0 encoder that returns the hidden state(s) it is built for.

    Hidden state ``i`` follows transformers' ``hidden_states``: 0 is the input of the first transformer
    layer, ``i`` the output of layer ``i``; ``LAST_HIDDEN_STATE`` is ``last_hidden_state`` (after the
    final layer norm in pre-norm models).

    Args:
        config: the checkpoint's transformers config (see ``unsupported_reason``).
        layers: the hidden states to return (their mean when several); only the layers they need are built.
        n_layers: the transformer layers to build instead (0 for a front end that returns hidden state 0).

    ``forward(input_values [B, S] float32, attention_mask [B, S] int or None) -> [B, T, H]``.
    """

    def __init__(self, config: Any, layers: Sequence[int], n_layers: int | None = None) -> None:
        super().__init__()
        reason = unsupported_reason(config)
        if reason is not None:
            raise ValueError(f"not a supported encoder: {reason}")
        self.layers_read = tuple(layers)
        self.feature_extractor = FeatureEncoder(config)
        self.feature_projection = FeatureProjection(config)
        if n_layers is None:
            n_layers = kept_layer_count(self.layers_read, int(config.num_hidden_layers))
        self.encoder = Encoder(config, n_layers)

    def frame_counts(self, lengths: torch.Tensor) -> torch.Tensor:
        """Encoder frames from input lengths in samples (int64 ``[B]``)."""
        encoder = self.feature_extractor
        return torch.div(lengths - encoder.receptive, encoder.hop, rounding_mode="floor") + 1

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.feature_projection(self.feature_extractor(input_values).transpose(1, 2))
        mask = None
        if attention_mask is not None:
            valid = self.frame_counts(attention_mask.sum(dim=-1))
            keep = torch.arange(x.shape[1], device=x.device)[None, :] < valid[:, None]  # [B, T]
            x = x * keep[..., None].to(x.dtype)  # padded frames enter the encoder as zeros
            mask = keep[:, None, None, :]
        encoder = self.encoder
        x = x + encoder.pos_conv_embed(x)
        if not encoder.pre_norm:
            x = encoder.layer_norm(x)
        wanted = set(self.layers_read)
        kept: dict[int, torch.Tensor] = {0: x} if 0 in wanted else {}
        for i, layer in enumerate(encoder.layers, start=1):
            x = layer(x, mask)
            if i in wanted:
                kept[i] = x
        if LAST_HIDDEN_STATE in wanted:
            kept[LAST_HIDDEN_STATE] = encoder.layer_norm(x) if encoder.pre_norm else x
        states = [kept[i] for i in self.layers_read]
        return states[0] if len(states) == 1 else torch.stack(states).mean(dim=0)


def load_speech_encoder(
    config: Any,
    layers: Sequence[int],
    files: Sequence[Path],
    dtype: torch.dtype,
    n_layers: int | None = None,
) -> tuple[SpeechEncoder, set[str]]:
    """Build a ``SpeechEncoder`` (``layers``, ``n_layers``) whose parameters are the checkpoint's tensors in
    ``dtype``.

    Tensors are read one at a time and converted to ``dtype`` where stored in another precision.

    Returns:
        the model (eval mode, no gradients) and the names of its weights folded from weight norm.

    Raises:
        ValueError: the files lack a parameter, or hold one with another shape.
    """
    with torch.device("meta"):
        model = SpeechEncoder(config, layers, n_layers)
    tensors = SafetensorsReader(files)
    state: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        tensor = tensors.get(name)
        if tensor is None:
            raise ValueError(f"the checkpoint has no tensor {name!r}")
        if tuple(tensor.shape) != tuple(param.shape):
            raise ValueError(
                f"{name!r} has shape {tuple(tensor.shape)} in the checkpoint, {tuple(param.shape)} here"
            )
        state[name] = tensor if tensor.dtype == dtype else tensor.to(dtype)
    model.load_state_dict(state, strict=True, assign=True)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model, tensors.folded
