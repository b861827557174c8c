"""Hugging Face speech encoders (HuBERT, WavLM, wav2vec2) as frozen, mean-pooled embedders.

The encoder is loaded once (by hub id and pinned revision, or from a local folder; the Hugging Face
offline mode ``HF_HUB_OFFLINE=1`` is honoured), put in ``eval()`` mode and run under
``torch.inference_mode``. Only the transformer layers the chosen hidden state needs are kept: the
layers above it are removed from the module list, so they cost nothing.

Batching follows what the architecture supports. Encoders whose convolutional feature encoder uses
layer norm (``feat_extract_norm == "layer"``: HuBERT-large/xlarge, WavLM-large, wav2vec2-large-lv60)
take padded batches with an attention mask and give the same result as one item at a time. Base models
use group norm over time, which padding would change, so they run one item at a time. Inputs longer
than ``window_seconds`` are embedded window by window and pooled over all frames, so memory stays
bounded by the window.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.backbones.base import BackboneSpec, EmbeddingStats
from shared.constants import SAMPLE_RATE
from shared.errors import BackboneError

log = logging.getLogger(__name__)

#: Internal marker for "the model's ``last_hidden_state``" (after the final layer norm, where there is one).
LAST_HIDDEN_STATE = -1

_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_fast_bf16() -> bool:
    """True when this CPU has bf16 matrix instructions (AVX-512 BF16 or AMX)."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_device(device: str) -> torch.device:
    """``"auto"`` picks CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BackboneError(
            f"device {device!r} was asked for, but CUDA is not available here; use 'cpu' or 'auto'"
        )
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """Turn ``"auto"`` into a concrete precision: bf16 on GPUs and on CPUs with bf16 matrix units, else fp32.

    fp16 is accepted on CUDA only (CPU fp16 matrix work is slow and loses range).
    """
    if dtype == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    if dtype not in _TORCH_DTYPES:
        raise BackboneError(f"unknown dtype {dtype!r}; accepted: auto, fp32, bf16, fp16")
    if dtype == "fp16" and device.type != "cuda":
        raise BackboneError("fp16 is supported on CUDA only; use fp32 or bf16 on a CPU")
    return dtype


def _layer_output(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


class HuggingFaceEncoder:
    """A frozen Hugging Face speech encoder pooled into one vector per utterance.

    Args:
        spec: the backbone spec (``kind == "hubert"``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``.
        dtype: ``"fp32"``, ``"bf16"``, ``"fp16"`` (CUDA only) or ``"auto"``.
        max_batch_size: at most this many utterances go through the encoder in one forward pass.
        window_seconds: inputs longer than this are embedded in consecutive windows of this length.
        model_override: load the weights from here instead of ``spec.model`` (a local copy of the same
            checkpoint, for example); the spec recorded in bundles is unchanged.
        local_files_only: never contact the hub (also implied by ``HF_HUB_OFFLINE=1``).

    Raises:
        BackboneError: the model cannot be loaded, or the layer does not exist.
    """

    def __init__(
        self,
        spec: BackboneSpec,
        *,
        device: str = "cpu",
        dtype: str = "fp32",
        max_batch_size: int = 8,
        window_seconds: float = 30.0,
        model_override: str | None = None,
        local_files_only: bool = False,
    ) -> None:
        from transformers import AutoConfig, AutoModel

        if spec.kind != "hubert":
            raise BackboneError(f"HuggingFaceEncoder needs a 'hubert' spec, got {spec.kind!r}")
        self.spec = spec
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.max_batch_size = max(1, int(max_batch_size))
        self.window_samples = max(SAMPLE_RATE, int(window_seconds * SAMPLE_RATE))
        source = model_override or spec.model
        assert source is not None
        kwargs: dict[str, Any] = {"local_files_only": local_files_only}
        if spec.revision and not Path(source).is_dir():
            kwargs["revision"] = spec.revision
        try:
            config = AutoConfig.from_pretrained(source, **kwargs)
            model = AutoModel.from_pretrained(source, **kwargs)
        except Exception as exc:  # transformers raises OSError, ValueError, HFValidationError...
            raise BackboneError(
                f"could not load the speech encoder {source!r}: {exc}. Give a Hugging Face hub id "
                "(with network access, or already in the local cache) or a folder written by save_pretrained."
            ) from exc

        self.n_layers = int(config.num_hidden_layers)
        self.layers = self._requested_layers(spec)
        self.supports_padding = getattr(config, "feat_extract_norm", "group") == "layer"
        self.do_normalize = self._read_do_normalize(source, kwargs, config)
        self.dim = int(config.hidden_size) * (2 if spec.pooling == "mean+std" else 1)
        self.fingerprint = {"config_sha256": _config_digest(config), "normalize": self.do_normalize}

        top = self.n_layers if self.layers == [LAST_HIDDEN_STATE] else max(self.layers)
        self.kept_layers = max(top, 1)
        encoder_layers = model.encoder.layers
        if self.kept_layers < self.n_layers:
            # The layers above the one we read are never run: drop them.
            model.encoder.layers = encoder_layers[: self.kept_layers]
        self._captured: dict[int, torch.Tensor] = {}
        self._install_hooks(model)

        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model.to(device=self.device, dtype=_TORCH_DTYPES[self.dtype])
        self._frames = model._get_feat_extract_output_lengths

    # -- set-up -------------------------------------------------------------------------------

    def _requested_layers(self, spec: BackboneSpec) -> list[int]:
        if spec.layer is None:
            return [LAST_HIDDEN_STATE]

        def absolute(layer: int) -> int:
            idx = layer + self.n_layers + 1 if layer < 0 else layer
            if not 0 <= idx <= self.n_layers:
                raise BackboneError(
                    f"layer {layer} does not exist: this encoder has hidden states 0..{self.n_layers}"
                )
            return idx

        first = absolute(spec.layer)
        last = absolute(spec.layer_end) if spec.layer_end is not None else first
        if last < first:
            raise BackboneError(f"layer range {spec.layer}..{spec.layer_end} is empty")
        return list(range(first, last + 1))

    @staticmethod
    def _read_do_normalize(source: str, kwargs: dict[str, Any], config: Any) -> bool:
        from transformers import AutoFeatureExtractor

        try:
            extractor = AutoFeatureExtractor.from_pretrained(source, **kwargs)
            return bool(getattr(extractor, "do_normalize", False))
        except Exception:  # no preprocessor_config.json: follow the architecture's convention
            return getattr(config, "feat_extract_norm", "group") == "layer"

    def _install_hooks(self, model: torch.nn.Module) -> None:
        layers = model.encoder.layers
        for idx in self.layers:
            if idx == LAST_HIDDEN_STATE:
                continue  # read from the model's output
            if idx == 0:

                def pre_hook(_module: Any, args: tuple, kwargs: dict, _i: int = idx) -> None:
                    self._captured[_i] = args[0] if args else kwargs["hidden_states"]

                layers[0].register_forward_pre_hook(pre_hook, with_kwargs=True)
            else:

                def hook(_module: Any, _args: Any, output: Any, _i: int = idx) -> None:
                    self._captured[_i] = _layer_output(output)

                layers[idx - 1].register_forward_hook(hook)

    # -- inference ----------------------------------------------------------------------------

    def embed_batch(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        """Embed mono float32 16 kHz waveforms; returns float32 ``[n, dim]`` in input order.

        Raises:
            BackboneError: a waveform is shorter than one encoder frame.
        """
        out = np.zeros((len(waveforms), self.dim), dtype=np.float32)
        prepared = [self._normalize(np.asarray(w, dtype=np.float32).reshape(-1)) for w in waveforms]
        short = [i for i, w in enumerate(prepared) if w.shape[0] <= self.window_samples]
        long = [i for i, w in enumerate(prepared) if w.shape[0] > self.window_samples]
        # Sorting by length keeps padding small inside each batch.
        short.sort(key=lambda i: prepared[i].shape[0])
        step = self.max_batch_size if self.supports_padding else 1
        for start in range(0, len(short), step):
            idx = short[start : start + step]
            for i, frames in zip(idx, self._forward([prepared[i] for i in idx]), strict=True):
                stats = EmbeddingStats()
                stats.add(frames)
                out[i] = stats.pool(self.spec.pooling)
        for i in long:
            stats = EmbeddingStats()
            w = prepared[i]
            for start in range(0, w.shape[0], self.window_samples):
                chunk = w[start : start + self.window_samples]
                if chunk.shape[0] < SAMPLE_RATE // 10 and stats.frames:
                    continue  # a tail shorter than 0.1 s adds noise, not information
                stats.add(self._forward([chunk])[0])
            out[i] = stats.pool(self.spec.pooling)
        return out

    def _normalize(self, wave: np.ndarray) -> np.ndarray:
        if not self.do_normalize:
            return wave
        # The checkpoint's own input normalisation: zero mean, unit variance per utterance.
        return ((wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)).astype(np.float32)

    @torch.inference_mode()
    def _forward(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        """Run the encoder on a batch; returns each item's valid frames, float32 ``[n_frames, hidden]``."""
        lengths = [w.shape[0] for w in waves]
        if min(lengths) < 400:
            raise BackboneError(
                f"audio of {min(lengths)} samples is shorter than one encoder frame (400 samples = 25 ms)"
            )
        batch = np.zeros((len(waves), max(lengths)), dtype=np.float32)
        for row, w in enumerate(waves):
            batch[row, : w.shape[0]] = w
        inputs = torch.from_numpy(batch).to(self.device, dtype=_TORCH_DTYPES[self.dtype])
        mask = None
        if len(waves) > 1:
            mask = torch.zeros(batch.shape, dtype=torch.long, device=self.device)
            for row, n in enumerate(lengths):
                mask[row, :n] = 1
        self._captured.clear()
        result = self.model(inputs, attention_mask=mask)
        states = [
            result.last_hidden_state if idx == LAST_HIDDEN_STATE else self._captured[idx]
            for idx in self.layers
        ]
        hidden = states[0] if len(states) == 1 else torch.stack(states).mean(dim=0)
        hidden = hidden.float().cpu().numpy()
        n_frames = self._frames(torch.tensor(lengths)).tolist()
        return [hidden[row, : int(n)] for row, n in enumerate(n_frames)]


def _config_digest(config: Any) -> str:
    keys = sorted(k for k in config.to_dict() if not k.startswith("_") and k not in {"transformers_version"})
    text = repr([(k, config.to_dict()[k]) for k in keys])
    return hashlib.sha256(text.encode()).hexdigest()[:16]
