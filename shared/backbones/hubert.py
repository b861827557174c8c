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

Everything around the network (input normalisation, layer selection, batching, windows, pooling over
valid frames) lives in ``PooledSpeechEncoder``; ``HuggingFaceEncoder`` runs the network with torch and
``shared.backbones.onnx.OnnxEncoder`` with ONNX Runtime.

The torch backend runs HuBERT and wav2vec 2.0 checkpoints stored as safetensors on this project's own
modules (``shared.backbones.native``: the same computation, without importing transformers' model code),
and every other architecture on transformers' model through ``HiddenStateReadout``, which the ONNX
export also uses. Either way the convolutional feature encoder runs one utterance at a time: faster, and
the activation peak no longer grows with the batch.

Precision and memory: in bf16 and fp16 the matrix weights are held in that precision and everything
else runs in fp32, with biases corrected for the rounded weights (``shared.backbones.precision``). When
the checkpoint is fp32 safetensors, it is first rewritten once, tensor by tensor, into a cached
half-precision copy holding only the kept layers (``<cache>/weights/<digest>/``), so that loading never
holds the fp32 file and the converted weights in memory together: the peak stays near the size of the
half-precision model. The corrected fp32 parameters are cached beside it.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.backbones.base import BackboneSpec, EmbeddingStats
from shared.backbones.native import (
    LAST_HIDDEN_STATE,
    kept_layer_count,
    load_speech_encoder,
    read_safetensors_header,
    unsupported_reason,
)
from shared.backbones.precision import (
    CheckpointTensors,
    convert_to_half_weights,
    correct_biases,
    full_precision_state,
    load_full_precision_state,
    mean_inputs,
    restore_from_checkpoint,
)
from shared.constants import SAMPLE_RATE
from shared.errors import BackboneError
from shared.signals import speech_like

log = logging.getLogger(__name__)

_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

#: Environment variable naming the folder for derived model files (converted weights, ONNX exports).
CACHE_ENV = "SER_CACHE_DIR"

#: How bf16/fp16 weights are used (recorded in backbone fingerprints: it changes the embeddings).
HALF_PRECISION_METHOD = "half-weights-fp32-activations-bias-corrected-v1"
#: The corrected fp32 parameters, kept beside a cached half-precision checkpoint (parameter names
#: differ between the project's modules and transformers' model, hence one file for each).
FULL_PRECISION_FILE = "full_precision.safetensors"
FULL_PRECISION_FILE_TRANSFORMERS = "full_precision-transformers.safetensors"
CALIBRATION_CLIPS = 8
CALIBRATION_SEED = 20_000


# -- machine facts ---------------------------------------------------------------------------


def _cgroup_cpu_quota() -> float | None:
    """The CPU quota of this process's cgroup in CPUs (Docker ``--cpus``), or None when unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]  # cgroup v2
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (at least 1).

    ``os.cpu_count()`` and the runtimes' own defaults see the host's cores even inside a container
    limited to fewer, and more compute threads than CPUs make every matrix product wait on the slowest.
    """
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        n = min(n, max(1, math.floor(quota)))
    return max(1, n)


def configure_torch_threads(threads: int | None = None) -> int:
    """Set torch's intra-op thread count (process-wide) and return it.

    ``threads`` > 0 is used as given. ``None`` or 0 keeps the current setting (so an earlier
    ``torch.set_num_threads`` stands) but caps it at ``available_cpus()``.
    """
    current = torch.get_num_threads()
    wanted = int(threads) if threads else min(current, available_cpus())
    if wanted != current:
        torch.set_num_threads(wanted)
    return wanted


def cpu_has_fast_bf16() -> bool:
    """True when this CPU has bf16 matrix instructions (AVX-512 BF16 or AMX).

    Measured on an AMD EPYC (Zen 4: AVX-512 BF16, no AMX) with HuBERT-large: bf16 runs 2.0-2.2x faster
    than fp32, so AVX-512 BF16 alone is enough to make bf16 the fast precision.
    """
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


def _fast_dtype(device: torch.device) -> str:
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """Turn ``"auto"`` into a concrete precision: the fast one of the device, bf16 on GPUs (fp16 where
    bf16 is missing) and on CPUs with bf16 matrix units, else fp32 (bf16 emulated on a CPU without them is
    slower than fp32). Half precision here means half-precision matrix weights with fp32 activations and
    bias correction (``shared.backbones.precision``): about 1% of the distance between different clips'
    embeddings away from fp32 on HuBERT-large.

    fp16 is accepted on CUDA only (CPU fp16 matrix work is slow and loses range).
    """
    if dtype == "auto":
        return _fast_dtype(device)
    if dtype not in _TORCH_DTYPES:
        raise BackboneError(f"unknown dtype {dtype!r}; accepted: auto, fp32, bf16, fp16")
    if dtype == "fp16" and device.type != "cuda":
        raise BackboneError("fp16 is supported on CUDA only; use fp32 or bf16 on a CPU")
    return dtype


def default_cache_dir() -> Path:
    """Where derived model files go: ``$SER_CACHE_DIR``, else ``$XDG_CACHE_HOME/ser``, else ``~/.cache/ser``."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "ser"


def cache_digest(payload: dict[str, Any]) -> str:
    """A short hex digest of a JSON-able payload: the name of a cache entry."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


@contextlib.contextmanager
def building_cache_entry(final: Path) -> Iterator[Path | None]:
    """Build a cache folder atomically: yields a scratch folder, renamed to ``final`` on success.

    Yields None when ``final`` already exists (nothing to build). Two processes building the same entry
    at once both succeed; the first rename wins and the other's copy is discarded.
    """
    if final.is_dir():
        yield None
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        yield scratch
        try:
            os.rename(scratch, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# -- the checkpoint ---------------------------------------------------------------------------


class EncoderSource:
    """Where an encoder checkpoint comes from: its config, input convention and weight files.

    Args:
        spec: a ``hubert`` spec.
        model_override: read the checkpoint from here instead of ``spec.model``.
        local_files_only: never contact the hub.

    Raises:
        BackboneError: the config cannot be loaded.
    """

    def __init__(
        self, spec: BackboneSpec, *, model_override: str | None = None, local_files_only: bool = False
    ) -> None:
        from transformers import AutoConfig

        if spec.kind != "hubert":
            raise BackboneError(f"a Hugging Face encoder needs a 'hubert' spec, got {spec.kind!r}")
        location = model_override or spec.model
        assert location is not None
        self.location = location
        self.is_local = Path(location).is_dir()
        self.load_kwargs: dict[str, Any] = {"local_files_only": local_files_only}
        if spec.revision and not self.is_local:
            self.load_kwargs["revision"] = spec.revision
        try:
            self.config = AutoConfig.from_pretrained(location, **self.load_kwargs)
        except Exception as exc:  # transformers raises OSError, ValueError, HFValidationError...
            raise BackboneError(self.load_failure(exc)) from exc
        self.do_normalize = self._read_do_normalize()

    def load_failure(self, exc: BaseException) -> str:
        return (
            f"could not load the speech encoder {self.location!r}: {str(exc).rstrip('.')}. Give a Hugging Face hub id "
            "(with network access, or already in the local cache) or a folder written by save_pretrained."
        )

    def _read_do_normalize(self) -> bool:
        from transformers import AutoFeatureExtractor

        try:
            extractor = AutoFeatureExtractor.from_pretrained(self.location, **self.load_kwargs)
            return bool(getattr(extractor, "do_normalize", False))
        except Exception:  # no preprocessor_config.json: follow the architecture's convention
            return getattr(self.config, "feat_extract_norm", "group") == "layer"

    def resolve_file(self, filename: str) -> Path | None:
        """A checkpoint file as a local path (the folder's own, or the hub cache's), or None if absent."""
        if self.is_local:
            path = Path(self.location) / filename
            return path if path.is_file() else None
        try:
            from transformers.utils import cached_file

            found = cached_file(
                self.location,
                filename,
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
                **self.load_kwargs,
            )
        except Exception:  # any hub trouble means "not available locally"
            return None
        return Path(found) if found else None

    def safetensors_files(self) -> list[Path] | None:
        """The checkpoint's safetensors weight files (one, or the shards of an index), or None."""
        single = self.resolve_file("model.safetensors")
        if single is not None:
            return [single]
        index = self.resolve_file("model.safetensors.index.json")
        if index is None:
            return None
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [self.resolve_file(name) for name in shards]
        return None if any(f is None for f in files) else [f for f in files if f is not None]

    def identity(self) -> dict[str, Any]:
        """What identifies these weights, for cache digests: the name, the revision or commit, and for a
        local folder the weight files' sizes and modification times."""
        ident: dict[str, Any] = {"location": self.location, "config": config_digest(self.config)}
        if self.is_local:
            folder = Path(self.location).resolve()
            ident["location"] = str(folder)
            ident["files"] = sorted(
                (p.name, p.stat().st_size, p.stat().st_mtime_ns)
                for p in folder.iterdir()
                if p.suffix in (".safetensors", ".bin", ".pt", ".json")
            )
        else:
            ident["revision"] = self.load_kwargs.get("revision")
            ident["commit"] = getattr(self.config, "_commit_hash", None)
        return ident


def config_digest(config: Any) -> str:
    """A short digest of a model config (recorded in bundles as ``config_sha256``)."""
    keys = sorted(k for k in config.to_dict() if not k.startswith("_") and k not in {"transformers_version"})
    text = repr([(k, config.to_dict()[k]) for k in keys])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def requested_layers(spec: BackboneSpec, n_layers: int) -> list[int]:
    """The absolute hidden-state indices a spec reads (``[LAST_HIDDEN_STATE]`` for the default).

    Raises:
        BackboneError: a layer does not exist, or the range is empty.
    """
    if spec.layer is None:
        return [LAST_HIDDEN_STATE]

    def absolute(layer: int) -> int:
        idx = layer + n_layers + 1 if layer < 0 else layer
        if not 0 <= idx <= n_layers:
            raise BackboneError(f"layer {layer} does not exist: this encoder has hidden states 0..{n_layers}")
        return idx

    first = absolute(spec.layer)
    last = absolute(spec.layer_end) if spec.layer_end is not None else first
    if last < first:
        raise BackboneError(f"layer range {spec.layer}..{spec.layer_end} is empty")
    return list(range(first, last + 1))


class HiddenStateReadout(torch.nn.Module):
    """A (truncated) Hugging Face encoder returning the chosen hidden state directly.

    ``forward(input_values [B, S] float, attention_mask [B, S] int64 or None)`` returns ``[B, T, H]``: the
    hidden state ``layers`` names, or the mean of several. Used as is by the torch backend and exported
    as the whole ONNX graph, so both backends compute the same thing.
    """

    def __init__(self, model: torch.nn.Module, layers: Sequence[int]) -> None:
        super().__init__()
        self.model = model
        self.layers = tuple(layers)
        self.needs_hidden_states = any(idx != LAST_HIDDEN_STATE for idx in self.layers)

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        out = self.model(
            input_values, attention_mask=attention_mask, output_hidden_states=self.needs_hidden_states
        )
        states = [
            out.last_hidden_state if idx == LAST_HIDDEN_STATE else out.hidden_states[idx]
            for idx in self.layers
        ]
        return states[0] if len(states) == 1 else torch.stack(states).mean(dim=0)


class PerUtteranceFeatureEncoder(torch.nn.Module):
    """Runs a convolutional feature encoder one utterance of the batch at a time.

    The conv stack's activations (512 channels at a fifth of the sample rate) are the largest tensors of
    a forward pass. One utterance at a time keeps them in cache and out of the peak: on HuBERT-large in
    bf16 on 2 cores, a batch of 8 clips of 2.5 s runs 11% faster and the peak memory no longer grows
    with the batch (a batch of 8 added about 200 MB). Utterances are independent in the conv stack
    (its norms are per utterance), so the result is the same as the batched call.
    """

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        if input_values.shape[0] == 1:
            return self.encoder(input_values)
        return torch.cat([self.encoder(input_values[i : i + 1]) for i in range(input_values.shape[0])])


# -- half-precision weights without an fp32 copy in memory -------------------------------------

_SAFETENSORS_DTYPES = {"F32": (np.float32, 4), "F16": (np.float16, 2), "BF16": (None, 2)}
_LAYER_KEY = re.compile(r"(?:^|\.)encoder\.layers\.(\d+)\.")


def _write_half_safetensors(sources: list[Path], target: Path, dtype: str, kept_layers: int) -> None:
    """Rewrite safetensors files as one file with float tensors in ``dtype`` ("bf16" or "fp16"), dropping
    the transformer layers from ``kept_layers`` up. Reads one tensor at a time with plain file reads (no
    mmap), so memory holds one tensor, never the checkpoint."""
    tag = {"bf16": "BF16", "fp16": "F16"}[dtype]
    entries: list[tuple[str, Path, dict[str, Any], int]] = []
    for src in sources:
        header, start = read_safetensors_header(src)
        for name, info in header.items():
            if name == "__metadata__":
                continue
            layer = _LAYER_KEY.search(name)
            if layer is not None and int(layer.group(1)) >= kept_layers:
                continue
            entries.append((name, src, info, start))
    out_header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, _, info, _ in entries:
        converts = info["dtype"] in ("F32", "F16", "BF16")
        out_dtype = tag if converts else info["dtype"]
        begin, end = info["data_offsets"]
        n_bytes = (end - begin) // _SAFETENSORS_DTYPES[info["dtype"]][1] * 2 if converts else end - begin
        out_header[name] = {
            "dtype": out_dtype,
            "shape": info["shape"],
            "data_offsets": [offset, offset + n_bytes],
        }
        offset += n_bytes
    blob = json.dumps(out_header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
    torch_dtype = _TORCH_DTYPES[dtype]
    handles: dict[Path, Any] = {}
    try:
        with target.open("wb") as out:
            out.write(struct.pack("<Q", len(blob)))
            out.write(blob)
            for _name, src, info, start in entries:
                if src not in handles:
                    handles[src] = src.open("rb")
                f = handles[src]
                begin, end = info["data_offsets"]
                f.seek(start + begin)
                raw = bytearray(f.read(end - begin))
                if info["dtype"] not in ("F32", "F16", "BF16"):
                    out.write(raw)
                    continue
                if info["dtype"] == "BF16":
                    tensor = torch.frombuffer(raw, dtype=torch.bfloat16)
                else:
                    tensor = torch.from_numpy(np.frombuffer(raw, dtype=_SAFETENSORS_DTYPES[info["dtype"]][0]))
                out.write(tensor.to(torch_dtype).view(torch.int16).numpy().tobytes())
    finally:
        for f in handles.values():
            f.close()


def half_precision_checkpoint(
    source: EncoderSource, dtype: str, kept_layers: int, cache_dir: Path | None = None
) -> Path | None:
    """A cached copy of the checkpoint in ``dtype`` with only ``kept_layers`` layers, built on first use.

    Returns the folder (loadable with ``from_pretrained``), or None when the checkpoint is not in
    safetensors format or the cache cannot be written (the caller then loads the original directly).
    """
    files = source.safetensors_files()
    if files is None:
        return None
    root = (cache_dir or default_cache_dir()) / "weights"
    entry = root / cache_digest(
        {"source": source.identity(), "dtype": dtype, "layers": kept_layers, "format": 1}
    )
    try:
        with building_cache_entry(entry) as scratch:
            if scratch is not None:
                log.info(
                    "writing a %s copy of %s (%d layers) to %s", dtype, source.location, kept_layers, entry
                )
                config = copy.deepcopy(source.config)
                config.num_hidden_layers = kept_layers
                config.save_pretrained(scratch)
                _write_half_safetensors(files, scratch / "model.safetensors", dtype, kept_layers)
    except OSError as exc:
        log.warning(
            "could not cache a %s copy of the encoder in %s (%s): loading it directly", dtype, root, exc
        )
        return None
    return entry


# -- shared pre- and post-processing ------------------------------------------------------------


class PooledSpeechEncoder:
    """What every speech-encoder backend shares: input normalisation, batching, windows, pooling.

    Subclasses set ``dtype`` and implement ``_run``; everything else is here.

    Args:
        spec: the backbone spec (``kind == "hubert"``).
        source: the checkpoint (config, input convention).
        max_batch_size: at most this many utterances go through the encoder in one forward pass.
        window_seconds: inputs longer than this are embedded in consecutive windows of this length.

    Raises:
        BackboneError: the layer does not exist.
    """

    dtype: str

    def __init__(
        self, spec: BackboneSpec, source: EncoderSource, *, max_batch_size: int, window_seconds: float
    ) -> None:
        config = source.config
        self.spec = spec
        self.source = source
        self.max_batch_size = max(1, int(max_batch_size))
        self.window_samples = max(SAMPLE_RATE, int(window_seconds * SAMPLE_RATE))
        self.n_layers = int(config.num_hidden_layers)
        self.layers = requested_layers(spec, self.n_layers)
        self.kept_layers = kept_layer_count(self.layers, self.n_layers)
        self.supports_padding = getattr(config, "feat_extract_norm", "group") == "layer"
        self.do_normalize = source.do_normalize
        self.dim = int(config.hidden_size) * (2 if spec.pooling == "mean+std" else 1)
        self.fingerprint: dict[str, Any] = {
            "config_sha256": config_digest(config),
            "normalize": self.do_normalize,
        }
        self._conv = list(zip(config.conv_kernel, config.conv_stride, strict=True))

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

    def frame_counts(self, lengths: Sequence[int]) -> list[int]:
        """Encoder frames produced from inputs of ``lengths`` samples (the conv stack's output lengths)."""
        counts = []
        for n in lengths:
            for kernel, stride in self._conv:
                n = (n - kernel) // stride + 1
            counts.append(int(n))
        return counts

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
        mask = None
        if len(waves) > 1:
            mask = (np.arange(batch.shape[1])[None, :] < np.array(lengths)[:, None]).astype(np.int64)
        hidden = self._run(batch, mask)
        return [hidden[row, :n] for row, n in enumerate(self.frame_counts(lengths))]

    def _run(self, batch: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """The network: float32 ``[B, S]`` samples and int64 ``[B, S]`` mask (None: no padding) to
        float32 ``[B, T, H]`` hidden states."""
        raise NotImplementedError


class HuggingFaceEncoder(PooledSpeechEncoder):
    """A frozen Hugging Face speech encoder pooled into one vector per utterance, run with torch.

    Args:
        spec: the backbone spec (``kind == "hubert"``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``.
        dtype: ``"fp32"``, ``"bf16"``, ``"fp16"`` (CUDA only) or ``"auto"`` (see ``resolve_dtype``).
        max_batch_size: at most this many utterances go through the encoder in one forward pass.
        window_seconds: inputs longer than this are embedded in consecutive windows of this length.
        model_override: load the weights from here instead of ``spec.model`` (a local copy of the same
            checkpoint, for example); the spec recorded in bundles is unchanged.
        local_files_only: never contact the hub (also implied by ``HF_HUB_OFFLINE=1``).
        threads: torch intra-op threads (process-wide); None or 0 keeps torch's setting, capped at the
            CPUs this process may use (see ``configure_torch_threads``). CPU only.
        cache_dir: where converted half-precision weights are cached (default ``default_cache_dir()``).

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
        threads: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if spec.kind != "hubert":
            raise BackboneError(f"HuggingFaceEncoder needs a 'hubert' spec, got {spec.kind!r}")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        source = EncoderSource(spec, model_override=model_override, local_files_only=local_files_only)
        super().__init__(spec, source, max_batch_size=max_batch_size, window_seconds=window_seconds)
        self.threads = configure_torch_threads(threads) if self.device.type == "cpu" else None

        torch_dtype = _TORCH_DTYPES[self.dtype]
        converted = None
        if self.dtype != "fp32":
            converted = half_precision_checkpoint(
                source, self.dtype, self.kept_layers, Path(cache_dir) if cache_dir else None
            )
        source_files = source.safetensors_files()
        files = [converted / "model.safetensors"] if converted is not None else source_files
        why_not_native = (
            unsupported_reason(source.config) if files else "its weights are not in safetensors files"
        )
        folded: set[str] = set()
        model: Any
        if why_not_native is None:
            assert files is not None
            try:
                model, folded = load_speech_encoder(source.config, self.layers, files, torch_dtype)
            except ValueError as exc:
                raise BackboneError(source.load_failure(exc)) from exc
        else:
            log.info("running %s with transformers' model code: %s", source.location, why_not_native)
            model = self._load_with_transformers(converted, torch_dtype)
        #: True when the encoder runs on ``shared.backbones.native`` modules, False for transformers' own.
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
        modules, folded_here = convert_to_half_weights(model, _TORCH_DTYPES[self.dtype])
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
        # Generated voiced signals: the correction needs each layer's mean input over speech-like
        # sound, not any particular speech. The feature encoder runs its convolution modules here, not
        # its time-major products, so that their input hooks see what they are given.
        encoder: Any = getattr(model, "feature_extractor", None)
        time_major = getattr(encoder, "time_major", False)
        if time_major:
            encoder.time_major = False
        try:
            for i in range(CALIBRATION_CLIPS):
                wave = self._normalize(speech_like(2.0 + 0.25 * i, seed=CALIBRATION_SEED + i))
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
