"""``EncoderOptions``: how a backbone runs, decided once at start-up and passed down whole.

The backbone spec (``BackboneSpec``, recorded in bundles) says *which* embeddings a bundle needs; the
options say how this process computes them: where, in which precision, on which runtime, with how many
threads, in batches and windows of what size, with derived files cached where, and whether the hub may be
contacted. The service builds them from its settings (``ServiceSettings.encoder_options``), the
command-line tools from their flags; ``/v1/info`` echoes them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.backbones.cache import default_cache_dir
from shared.errors import BackboneError

#: How a ``hubert`` encoder runs: torch (fp32/bf16/fp16), or ONNX Runtime on the CPU in fp32 or with
#: dynamically quantised int8 matrix products (needs the ``onnx`` extra); ``auto`` chooses by the machine
#: (``shared.backbones.auto``).
BACKENDS = ("auto", "torch", "onnx", "onnx-int8")
#: Precisions an option may ask for; ``auto`` is the device's fast one (see ``runtime.resolve_dtype``).
DTYPES = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class EncoderOptions:
    """How a speech encoder runs (eGeMAPS ignores all of it).

    Attributes:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (CUDA when available).
        dtype: ``"fp32"``, ``"bf16"``, ``"fp16"`` (CUDA only) or ``"auto"``. The ONNX backends take
            ``"auto"`` or ``"fp32"`` (they compute in fp32, or int8 for ``onnx-int8``).
        backend: ``"torch"``, ``"onnx"`` (ONNX Runtime, fp32), ``"onnx-int8"`` (ONNX Runtime, int8
            matrix products; its embeddings differ more from fp32) or ``"auto"`` (with dtype ``"auto"``:
            torch in bf16 where the CPU has bf16 units, int8 where it has VNNI and the int8 path passes
            its accuracy check, else torch fp32; see ``shared.backbones.auto``). The ONNX backends run on
            the CPU.
        threads: compute threads (torch's are process-wide); None keeps torch's setting capped at the
            CPUs this process may use (ONNX Runtime: that CPU count).
        max_batch_size: at most this many utterances go through the encoder in one forward pass.
        window_seconds: inputs longer than this are encoded in consecutive windows of this length.
        cache_dir: where derived model files go (half-precision copies under ``weights/``, ONNX exports
            under ``onnx/``); None means ``default_cache_dir()``.
        onnx_cache_dir: where ONNX exports go instead of ``<cache_dir>/onnx``.
        model_override: load the weights from here instead of the spec's model (a local copy of the
            same checkpoint); the spec recorded in bundles is unchanged.
        offline: never contact the Hugging Face hub (also implied by ``HF_HUB_OFFLINE=1``).

    Raises:
        BackboneError: an unknown backend or precision, or a size below 1.
    """

    device: str = "cpu"
    dtype: str = "fp32"
    backend: str = "torch"
    threads: int | None = None
    max_batch_size: int = 8
    window_seconds: float = 30.0
    cache_dir: Path | None = None
    onnx_cache_dir: Path | None = None
    model_override: str | None = None
    offline: bool = False

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise BackboneError(f"unknown backend {self.backend!r}; accepted: {', '.join(BACKENDS)}")
        if self.dtype not in DTYPES:
            raise BackboneError(f"unknown dtype {self.dtype!r}; accepted: {', '.join(DTYPES)}")
        if self.max_batch_size < 1:
            raise BackboneError(f"max_batch_size must be at least 1, got {self.max_batch_size}")
        if self.window_seconds <= 0:
            raise BackboneError(f"window_seconds must be positive, got {self.window_seconds}")
        if self.threads is not None and self.threads < 0:
            raise BackboneError(f"threads must be 0 or more, got {self.threads}")
        # 0 threads means "the default", as in the settings.
        object.__setattr__(self, "threads", self.threads or None)
        for name in ("cache_dir", "onnx_cache_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))

    @property
    def model_cache(self) -> Path:
        """The folder for derived model files: ``cache_dir``, else ``default_cache_dir()``."""
        return (self.cache_dir or default_cache_dir()).expanduser()

    @property
    def onnx_cache(self) -> Path:
        """The folder for ONNX exports: ``onnx_cache_dir``, else ``<model_cache>/onnx``."""
        return (self.onnx_cache_dir or self.model_cache / "onnx").expanduser()

    def replace(self, **changes: Any) -> EncoderOptions:
        """A copy with ``changes`` applied (checked like a new one)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The options as JSON values, with the cache folders resolved (what ``/v1/info`` shows)."""
        data = dataclasses.asdict(self)
        data["cache_dir"] = str(self.model_cache)
        data["onnx_cache_dir"] = str(self.onnx_cache)
        return data
