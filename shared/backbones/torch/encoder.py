"""The torch backend: a Hugging Face speech encoder run with torch, in fp32, bf16 or fp16.

The encoder is loaded once (by hub id and pinned revision, or from a local folder; the Hugging Face
offline mode ``HF_HUB_OFFLINE=1`` is honoured), put in ``eval()`` mode and run under
``torch.inference_mode``. Only the transformer layers the chosen hidden state needs are kept.

HuBERT and wav2vec 2.0 checkpoints stored as safetensors run on the project's own modules
(``shared.backbones.torch.modules``: the same computation, without importing transformers' model code);
every other architecture runs on transformers' model through ``HiddenStateReadout``
(``shared.backbones.torch.hf_model``), which the ONNX export also uses. Either way the convolutional
feature encoder runs one utterance at a time.

Precision and memory: in bf16 and fp16 the matrix weights are held in that precision and everything
else runs in fp32, with biases corrected for the rounded weights (``shared.backbones.torch.precision``).
The weights come from a cached half-precision copy of the checkpoint (``checkpoint.half_precision_checkpoint``);
the corrected fp32 parameters are cached beside it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.backbones.base import BackboneSpec
from shared.backbones.checkpoint import EncoderSource, half_precision_checkpoint
from shared.backbones.options import EncoderOptions
from shared.backbones.pooled import PooledSpeechEncoder
from shared.backbones.runtime import TORCH_DTYPES, configure_torch_threads, resolve_device, resolve_dtype
from shared.backbones.torch.hf_model import HiddenStateReadout, PerUtteranceFeatureEncoder
from shared.backbones.torch.modules import load_speech_encoder, unsupported_reason
from shared.backbones.torch.precision import (
    CheckpointTensors,
    convert_to_half_weights,
    correct_biases,
    full_precision_state,
    load_full_precision_state,
    mean_inputs,
    restore_from_checkpoint,
)
from shared.errors import BackboneError

log = logging.getLogger(__name__)

#: How bf16/fp16 weights are used (recorded in backbone fingerprints: it changes the embeddings).
HALF_PRECISION_METHOD = "half-weights-fp32-activations-bias-corrected-v1"
#: The corrected fp32 parameters, kept beside a cached half-precision checkpoint (parameter names
#: differ between the project's modules and transformers' model, hence one file for each).
FULL_PRECISION_FILE = "full_precision.safetensors"
FULL_PRECISION_FILE_TRANSFORMERS = "full_precision-transformers.safetensors"


class TorchEncoder(PooledSpeechEncoder):
    """A frozen Hugging Face speech encoder (HuBERT, WavLM, wav2vec2) run with torch, pooled per utterance.

    Args:
        spec: the backbone spec (``kind == "hubert"``).
        options: every field applies: ``device``, ``dtype`` (``auto``: see ``resolve_dtype``),
            ``threads`` (process-wide, CPU only; see ``configure_torch_threads``), ``max_batch_size``,
            ``window_seconds``, ``cache_dir`` (the half-precision copies), ``model_override``, ``offline``.

        front_end_only: compute hidden state 0 only (``spec`` reads layer 0), building no transformer
            layer: the ONNX backend's front end.

    Raises:
        BackboneError: the model cannot be loaded, or the layer does not exist.
    """

    def __init__(self, spec: BackboneSpec, options: EncoderOptions, *, front_end_only: bool = False) -> None:
        if spec.kind != "hubert":
            raise BackboneError(f"TorchEncoder needs a 'hubert' spec, got {spec.kind!r}")
        self.backend = "torch"
        self.device = resolve_device(options.device)
        self.dtype = resolve_dtype(options.dtype, self.device)
        source = EncoderSource(spec, options)
        super().__init__(spec, source, options)
        if front_end_only:
            if self.layers != [0]:
                raise BackboneError("a front end returns hidden state 0: its spec reads layer 0")
            if unsupported_reason(source.config) is None and (
                self.dtype != "fp32" or source.safetensors_files()
            ):
                # The project's modules build no transformer layer at all (transformers' model keeps one).
                self.kept_layers = 0
        self.threads = configure_torch_threads(options.threads) if self.device.type == "cpu" else None

        torch_dtype = TORCH_DTYPES[self.dtype]
        converted = None
        if self.dtype != "fp32":
            converted = half_precision_checkpoint(source, self.dtype, self.kept_layers, options.model_cache)
        source_files = source.safetensors_files()
        files = [converted / "model.safetensors"] if converted is not None else source_files
        why_not_native = (
            unsupported_reason(source.config)
            if files
            else "its weights are neither safetensors nor pytorch_model.bin"
        )
        folded: set[str] = set()
        model: Any
        if why_not_native is None:
            assert files is not None
            try:
                model, folded = load_speech_encoder(
                    source.config, self.layers, files, torch_dtype, n_layers=self.kept_layers
                )
            except ValueError as exc:
                raise BackboneError(source.load_failure(exc)) from exc
        else:
            log.info("running %s with transformers' model code: %s", source.location, why_not_native)
            model = self._load_with_transformers(converted, torch_dtype)
        #: True when the encoder runs on ``shared.backbones.torch.modules``, False for transformers' own model.
        self.native = why_not_native is None
        model = model.to(device=self.device)
        if self.dtype != "fp32":
            self.fingerprint["half_precision"] = HALF_PRECISION_METHOD
            self._use_half_weights(model, converted, folded, source_files)
        if self.native:
            self.readout: torch.nn.Module = model
        else:
            model.feature_extractor = PerUtteranceFeatureEncoder(model.feature_extractor)
            self.readout = HiddenStateReadout(model, self.layers).eval()
        self.model = model

    def _load_with_transformers(self, converted: Path | None, torch_dtype: torch.dtype) -> torch.nn.Module:
        from transformers import AutoModel

        location, kwargs = self.source.location, dict(self.source.load_kwargs)
        if converted is not None:
            location, kwargs = str(converted), {"local_files_only": True}
        try:
            model = AutoModel.from_pretrained(location, dtype=torch_dtype, **kwargs)
        except Exception as exc:  # transformers raises OSError, ValueError, HFValidationError...
            raise BackboneError(self.source.load_failure(exc)) from exc
        if len(model.encoder.layers) > self.kept_layers:
            # The layers above the one we read are never run: drop them.
            model.encoder.layers = model.encoder.layers[: self.kept_layers]
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    def _use_half_weights(
        self,
        model: torch.nn.Module,
        converted: Path | None,
        folded: set[str],
        source_files: list[Path] | None,
    ) -> None:
        """Half-precision matrix weights, fp32 everything else, bias-corrected (see ``precision``).

        The corrected fp32 parameters are computed once from the checkpoint's ``source_files`` and kept
        beside the cached half-precision weights (``full_precision.safetensors``); later loads read them
        back.
        """
        modules, folded_here = convert_to_half_weights(model, TORCH_DTYPES[self.dtype])
        folded = folded | folded_here
        name = FULL_PRECISION_FILE if self.native else FULL_PRECISION_FILE_TRANSFORMERS
        saved = converted / name if converted is not None else None
        if saved is not None and saved.is_file() and load_full_precision_state(model, folded, saved):
            return
        if source_files is None:
            log.warning(
                "%s has no safetensors weights: its biases and norms stay rounded to %s and are not "
                "bias-corrected, so embeddings differ more from fp32",
                self.source.location,
                self.dtype,
            )
            return
        exact = CheckpointTensors(source_files)
        restore_from_checkpoint(model, folded, exact)
        means = mean_inputs(modules, lambda: self._run_calibration(model))
        corrected = correct_biases(modules, means, exact)
        log.info(
            "bias-corrected %d of %d %s layers of %s",
            corrected,
            len(modules),
            self.dtype,
            self.source.location,
        )
        if saved is None:
            return
        scratch = saved.with_name(f".{saved.name}.{os.getpid()}")
        try:
            from safetensors.torch import save_file

            save_file(full_precision_state(model, folded), str(scratch))
            os.replace(scratch, saved)
        except OSError as exc:
            log.warning("could not cache the corrected parameters in %s (%s)", saved.parent, exc)
            scratch.unlink(missing_ok=True)

    @torch.inference_mode()
    def _run_calibration(self, model: torch.nn.Module) -> None:
        # The feature encoder runs its convolution modules here, not its time-major products, so that
        # their input hooks see what they are given.
        encoder: Any = getattr(model, "feature_extractor", None)
        time_major = getattr(encoder, "time_major", False)
        if time_major:
            encoder.time_major = False
        try:
            for wave in self.calibration_waves():
                model(torch.from_numpy(wave)[None].to(self.device))
        finally:
            if time_major:
                encoder.time_major = True

    def frame_counts(self, lengths: Sequence[int]) -> list[int]:
        if self.native:
            return super().frame_counts(lengths)
        # transformers' own formula (it also knows about adapter layers some checkpoints add).
        return [
            int(n) for n in self.model._get_feat_extract_output_lengths(torch.tensor(list(lengths))).tolist()
        ]

    @torch.inference_mode()
    def _run(self, batch: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        # The waveform stays fp32 at every precision: only matrix weights are held in half precision.
        inputs = torch.from_numpy(batch).to(self.device)
        attention_mask = None if mask is None else torch.from_numpy(mask).to(self.device)
        return self.readout(inputs, attention_mask).float().cpu().numpy()
