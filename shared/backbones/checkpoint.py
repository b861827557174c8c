"""Where an encoder's weights come from: the checkpoint's config and files, safetensors reading, and the
cached half-precision copy.

Weights are read tensor by tensor from safetensors files (``SafetensorsReader``), never memory-mapped and
never as a whole file. When an encoder runs in bf16 or fp16 and the checkpoint is fp32 safetensors, it is
first rewritten once, tensor by tensor, into a cached half-precision copy holding only the kept layers
(``<cache>/weights/<digest>/``), so that loading never holds the fp32 file and the converted weights in
memory together: the peak stays near the size of the half-precision model.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.backbones.base import BackboneSpec
from shared.backbones.cache import building_cache_entry, cache_digest
from shared.backbones.options import EncoderOptions
from shared.backbones.runtime import TORCH_DTYPES
from shared.errors import BackboneError
from shared.hashing import sha256_file

log = logging.getLogger(__name__)

_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def route_hub_logs() -> None:
    """Send transformers' and huggingface_hub's log records through the application's handlers only:
    each library also installs a stderr handler of its own, which printed every hub warning twice."""
    import huggingface_hub.utils.logging as hub_logging
    import transformers.utils.logging as transformers_logging

    transformers_logging.disable_default_handler()
    transformers_logging.enable_propagation()
    hub_root = logging.getLogger("huggingface_hub")
    for handler in list(hub_root.handlers):
        hub_root.removeHandler(handler)
    hub_logging.enable_propagation()


class EncoderSource:
    """Where an encoder checkpoint comes from: its config, input convention and weight files.

    Args:
        spec: a ``hubert`` spec.
        options: ``model_override`` (read the checkpoint from there instead of ``spec.model``) and
            ``offline`` (never contact the hub) apply.

    Raises:
        BackboneError: the config cannot be loaded.
    """

    def __init__(self, spec: BackboneSpec, options: EncoderOptions) -> None:
        route_hub_logs()
        from transformers import AutoConfig

        if spec.kind != "hubert":
            raise BackboneError(f"a Hugging Face encoder needs a 'hubert' spec, got {spec.kind!r}")
        location = options.model_override or spec.model
        assert location is not None
        self.location = location
        self.is_local = Path(location).is_dir()
        self.offline = options.offline
        self.cache_dir = options.model_cache
        self.load_kwargs: dict[str, Any] = {"local_files_only": options.offline}
        if spec.revision and not self.is_local:
            self.load_kwargs["revision"] = spec.revision
        try:
            self.config = AutoConfig.from_pretrained(location, **self.load_kwargs)
        except Exception as exc:  # transformers raises OSError, ValueError, HFValidationError...
            raise BackboneError(self.load_failure(exc)) from exc
        self.do_normalize = self._read_do_normalize()

    def load_failure(self, exc: BaseException) -> str:
        if self.offline and not self.is_local and not self.location.startswith(("/", ".", "~")):
            from huggingface_hub import constants

            return (
                f"offline mode: the speech encoder {self.location!r} is not in the local Hugging Face cache "
                f"({constants.HF_HUB_CACHE}) and is not a folder; the hub was not contacted. Fetch it once "
                "where the network is reachable (or copy the cache), or point SER_BACKBONE_MODEL at a folder "
                "written by save_pretrained."
            )
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

    @property
    def commit(self) -> str | None:
        """The hub commit the checkpoint's files come from (the snapshot folder of the Hugging Face cache
        that holds its config), or None for a local folder."""
        if self.is_local:
            return None
        found = getattr(self.config, "_commit_hash", None)
        if found:
            return str(found)
        config = self.resolve_file("config.json")
        if config is not None and config.parent.parent.name == "snapshots":
            return config.parent.name
        return None

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

    def _sharded(self, single: str, index_name: str) -> list[Path] | None:
        """One weight file, or the shards its index lists; None when absent."""
        found = self.resolve_file(single)
        if found is not None:
            return [found]
        index = self.resolve_file(index_name)
        if index is None:
            return None
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [self.resolve_file(name) for name in shards]
        return None if any(f is None for f in files) else [f for f in files if f is not None]

    def safetensors_files(self) -> list[Path] | None:
        """The checkpoint's weights as safetensors files: its own (one, or the shards of an index), else
        its legacy ``pytorch_model.bin`` converted once into the cache (``convert_legacy_weights``); None
        when it has neither.

        Raises:
            BackboneError: a ``.bin`` file holds anything but tensors, or cannot be read.
        """
        own = self._sharded("model.safetensors", "model.safetensors.index.json")
        if own is not None:
            return own
        legacy = self._sharded("pytorch_model.bin", "pytorch_model.bin.index.json")
        if legacy is None:
            return None
        try:
            return [convert_legacy_weights(path, self.cache_dir) for path in legacy]
        except OSError as exc:
            log.warning(
                "could not convert %s's pytorch_model.bin into %s (%s): it runs on transformers' model",
                self.location,
                self.cache_dir,
                exc,
            )
            return None

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
            ident["commit"] = self.commit
        return ident


def config_digest(config: Any) -> str:
    """A short digest of a model config (recorded in bundles as ``config_sha256``)."""
    keys = sorted(k for k in config.to_dict() if not k.startswith("_") and k not in {"transformers_version"})
    text = repr([(k, config.to_dict()[k]) for k in keys])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def convert_legacy_weights(path: Path, cache_dir: Path) -> Path:
    """A ``pytorch_model.bin`` file as safetensors, written once to ``<cache_dir>/converted/<sha256>/``
    and reused (keyed by the file's own hash, so an edited file is converted again).

    The conversion runs in a child process (``write_legacy_as_safetensors``), so the memory it pages in
    is never part of the calling process's peak: a service's first start peaks as a cached one does.
    Old weight-norm names (``weight_g``, ``weight_v``) are kept as stored; ``SafetensorsReader`` folds them.

    Raises:
        BackboneError: the file holds anything but a mapping of names to tensors, or cannot be read.
        OSError: the cache cannot be written.
    """
    import subprocess
    import sys

    digest = sha256_file(path)
    entry = cache_dir / "converted" / digest[:32]
    target = entry / "model.safetensors"
    if target.is_file():
        return target
    log.info("converting %s to safetensors in %s (once)", path, entry)
    with building_cache_entry(entry) as scratch:
        if scratch is not None:
            code = "import sys; from shared.backbones.checkpoint import write_legacy_as_safetensors as w; w(*sys.argv[1:])"
            done = subprocess.run(
                [sys.executable, "-c", code, str(path), str(scratch / "model.safetensors")],
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                lines = done.stderr.strip().splitlines()
                raise BackboneError(
                    lines[-1].split(": ", 1)[-1] if lines else f"converting {path.name} failed"
                )
    return target


#: torch dtypes as safetensors names them.
_SAFETENSORS_NAMES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def write_legacy_as_safetensors(source: str | Path, target: str | Path) -> None:
    """Write a ``pytorch_model.bin`` (read with ``torch.load(weights_only=True)``, memory-mapped: it cannot
    run code) as one safetensors file, one tensor at a time.

    Raises:
        BackboneError: the file holds anything but a mapping of names to tensors, or cannot be read.
    """
    name = Path(source).name
    try:
        state = torch.load(source, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # pickle.UnpicklingError for code or objects, RuntimeError for a damaged zip
        raise BackboneError(
            f"{name} cannot be loaded as weights only ({type(exc).__name__}: {str(exc).splitlines()[0]}): "
            "a checkpoint file that holds code or other objects is refused"
        ) from exc
    if not isinstance(state, dict) or not state:
        raise BackboneError(f"{name} does not hold a mapping of parameter names to tensors: refused")
    odd = sorted(str(k) for k, v in state.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor)))
    if odd:
        raise BackboneError(f"{name} holds entries that are not tensors ({', '.join(odd[:5])}): refused")
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, tensor in state.items():
        if tensor.dtype not in _SAFETENSORS_NAMES:
            raise BackboneError(f"{name}: tensor {key!r} has the unsupported type {tensor.dtype}: refused")
        size = tensor.numel() * tensor.element_size()
        header[key] = {
            "dtype": _SAFETENSORS_NAMES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(target, "wb") as out:
        out.write(struct.pack("<Q", len(blob)))
        out.write(blob)
        for tensor in state.values():
            out.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def read_safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """A safetensors file's JSON header and the offset where its tensor data starts."""
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    return header, 8 + size


class SafetensorsReader:
    """Tensors of safetensors files by the model's parameter names, each read into its own memory.

    Names are matched as stored, or without a leading prefix (``hubert.``, ``wav2vec2.``, as fine-tuned
    heads store them). Weight-norm pairs (``weight_g``/``weight_v`` or
    ``parametrizations.weight.original0``/``original1``) are folded into a plain ``weight``; ``folded``
    lists the names served that way.

    Each tensor is read straight into a fresh torch buffer: one tensor in flight, never the whole file.
    Not memory-mapped: resident memory would be the same, and a model that keeps no mapping does not
    depend on its file staying in place (a cache folder may be cleared while the service runs).

    Args:
        files: safetensors files.
    """

    def __init__(self, files: Iterable[Path]) -> None:
        self._entries: dict[str, tuple[Path, int, torch.dtype, list[int], int]] = {}
        self.folded: set[str] = set()
        for path in files:
            header, start = read_safetensors_header(path)
            for key, info in header.items():
                if key == "__metadata__" or info["dtype"] not in _DTYPES:
                    continue
                begin, end = info["data_offsets"]
                entry = (path, start + begin, _DTYPES[info["dtype"]], info["shape"], end - begin)
                self._entries.setdefault(key, entry)
                if "." in key:
                    self._entries.setdefault(key.split(".", 1)[1], entry)

    def _tensor(self, name: str) -> torch.Tensor | None:
        entry = self._entries.get(name)
        if entry is None:
            return None
        path, offset, dtype, shape, n_bytes = entry
        raw = torch.empty(n_bytes, dtype=torch.uint8)
        if n_bytes:
            with path.open("rb") as f:
                f.seek(offset)
                if f.readinto(raw.numpy().data) != n_bytes:
                    raise ValueError(f"{path} is truncated: {name!r} is incomplete")
        return raw.view(dtype).view(shape)

    def get(self, name: str) -> torch.Tensor | None:
        """The tensor for parameter ``name`` (as stored: no dtype change), or None when absent."""
        tensor = self._tensor(name)
        if tensor is not None or not name.endswith(".weight"):
            return tensor
        stem = name[: -len(".weight")]
        for g_name, v_name in (
            (f"{stem}.weight_g", f"{stem}.weight_v"),
            (f"{stem}.parametrizations.weight.original0", f"{stem}.parametrizations.weight.original1"),
        ):
            g, v = self._tensor(g_name), self._tensor(v_name)
            if g is not None and v is not None:
                self.folded.add(name)
                return fold_weight_norm(g, v).to(v.dtype)
        return None


def fold_weight_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``g * v / ||v||``, the norm taken over every dimension where ``g`` has size 1 (computed in fp32)."""
    g, v = g.float(), v.float()
    kept = [i for i, size in enumerate(g.shape) if size != 1]
    others = [i for i in range(v.dim()) if i not in kept]
    return v * (g / torch.linalg.vector_norm(v, dim=others, keepdim=True))


# -- half-precision copies without an fp32 copy in memory -------------------------------------

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
    torch_dtype = TORCH_DTYPES[dtype]
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
    source: EncoderSource, dtype: str, kept_layers: int, cache_dir: Path
) -> Path | None:
    """A cached copy of the checkpoint in ``dtype`` with only ``kept_layers`` layers, built on first use
    in ``<cache_dir>/weights/<digest>/``.

    Returns the folder (loadable with ``from_pretrained``), or None when the checkpoint is not in
    safetensors format or the cache cannot be written (the caller then loads the original directly).
    """
    files = source.safetensors_files()
    if files is None:
        return None
    root = cache_dir / "weights"
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
