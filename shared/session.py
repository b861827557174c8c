"""Session normalisation: each feature z-scored with the statistics of its own speaker or recording.

A classifier trained on one corpus meets a new voice, microphone and room in every user's recording;
features that carry the level, the pitch range or the spectral tilt of the voice then sit far from the
training data, and the classifier falls back on a near-constant answer. The standard remedy is to
express each utterance relative to its *session* (one speaker, or one recording): subtract the session's
mean and divide by its standard deviation, feature by feature. What is left is how this utterance
differs from the speaker's usual voice, which is what carries the emotion.

Training normalises every speaker with that speaker's own statistics (``normalise_groups``), so
cross-validation never lends one speaker's statistics to another. Serving keeps the running statistics
of a session (``SessionStats``: per feature a count, a sum and a sum of squares, nothing else) and
normalises each of its utterances with them once the session holds ``MIN_SESSION_UTTERANCES``; below
that, the statistics are too noisy and the predictor uses the classifier fitted without normalisation.

Statistics include the utterance being classified. A session whose utterances all carry one emotion
is normalised towards that emotion's own average: session normalisation assumes a session mixes emotions,
as a conversation or a long recording does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Utterances a session needs before its statistics are used (fewer: the no-session classifier).
MIN_SESSION_UTTERANCES = 10
#: A feature whose session standard deviation is below this share of its magnitude is only centred.
_FLAT = 1e-8


@dataclass
class SessionStats:
    """Running per-feature statistics of one session: counts, sums and sums of squares of finite values.

    Attributes:
        utterances: how many utterances were added.
        count, total, total_sq: float64 ``[d]``, over each feature's finite values only.
    """

    utterances: int
    count: np.ndarray
    total: np.ndarray
    total_sq: np.ndarray

    @classmethod
    def empty(cls, dim: int) -> SessionStats:
        return cls(0, np.zeros(dim), np.zeros(dim), np.zeros(dim))

    @classmethod
    def of(cls, features: np.ndarray) -> SessionStats:
        """The statistics of features ``[n, d]`` (NaN and ±Inf are left out, feature by feature)."""
        stats = cls.empty(np.asarray(features).reshape(len(features), -1).shape[1])
        stats.add(features)
        return stats

    @property
    def dim(self) -> int:
        return int(self.total.shape[0])

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays."""
        return int(self.count.nbytes + self.total.nbytes + self.total_sq.nbytes)

    def add(self, features: np.ndarray) -> None:
        """Add utterances' features ``[n, d]`` (or one ``[d]``)."""
        x = np.asarray(features, dtype=np.float64).reshape(-1, self.dim)
        finite = np.isfinite(x)
        clean = np.where(finite, x, 0.0)
        self.utterances += len(x)
        self.count += finite.sum(axis=0)
        self.total += clean.sum(axis=0)
        self.total_sq += (clean * clean).sum(axis=0)

    def copy(self) -> SessionStats:
        return SessionStats(self.utterances, self.count.copy(), self.total.copy(), self.total_sq.copy())

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-feature mean and standard deviation ``[d]`` (population; 1 where a feature is flat, NaN
        where it never had a finite value)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = self.total / self.count
            var = np.maximum(self.total_sq / self.count - mean * mean, 0.0)
        std = np.sqrt(var)
        flat = ~(std > _FLAT * (1.0 + np.abs(mean)))
        return mean, np.where(flat, 1.0, std)

    def normalise(self, features: np.ndarray) -> np.ndarray:
        """Features ``[n, d]`` z-scored with these statistics (float64; NaN stays NaN)."""
        mean, std = self.mean_std()
        return (np.asarray(features, dtype=np.float64) - mean) / std


def normalise_groups(features: np.ndarray, groups: Sequence[str] | np.ndarray) -> np.ndarray:
    """Each group's rows ``[n, d]`` z-scored with that group's own statistics (``SessionStats``)."""
    x = np.asarray(features, dtype=np.float64)
    keys = np.asarray(groups)
    out = np.empty_like(x)
    for key in np.unique(keys):
        rows = keys == key
        out[rows] = SessionStats.of(x[rows]).normalise(x[rows])
    return out
