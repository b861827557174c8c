"""eGeMAPS v02 functionals: the 88 hand-crafted acoustic features that are the standard SER baseline.

Computed by openSMILE (the ``opensmile`` package ships its native library; no weights, no GPU). It
runs anywhere, lets accuracy be measured on real speech without a large encoder, and is a cheap CPU
option.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shared.backbones.base import BackboneSpec
from shared.constants import SAMPLE_RATE
from shared.errors import BackboneError

EGEMAPS_DIM = 88


class EgemapsBackbone:
    """The eGeMAPS v02 functionals (88 features per utterance).

    ``pooling`` does not apply (the functionals are already utterance-level statistics); ``dtype`` is
    always fp32.
    """

    dtype = "fp32"

    def __init__(self, spec: BackboneSpec) -> None:
        import opensmile

        if spec.kind != "egemaps":
            raise BackboneError(f"EgemapsBackbone needs an 'egemaps' spec, got {spec.kind!r}")
        self.spec = spec
        self.dim = EGEMAPS_DIM
        self._smile = opensmile.Smile(
            feature_set=opensmile.FeatureSet.eGeMAPSv02,
            feature_level=opensmile.FeatureLevel.Functionals,
        )
        self.fingerprint = {"opensmile": opensmile.__version__, "feature_set": "eGeMAPSv02"}

    def embed_batch(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        """Embed mono float32 16 kHz waveforms; returns float32 ``[n, 88]`` (may hold NaN for degenerate input)."""
        out = np.empty((len(waveforms), self.dim), dtype=np.float32)
        for i, wave in enumerate(waveforms):
            signal = self.spec.prepare(wave)
            if signal.shape[0] < SAMPLE_RATE // 10:
                raise BackboneError(
                    f"audio of {signal.shape[0]} samples is too short for eGeMAPS (needs 0.1 s)"
                )
            feats = self._smile.process_signal(signal, SAMPLE_RATE)
            out[i] = feats.to_numpy(dtype=np.float32).reshape(-1)
        return out
