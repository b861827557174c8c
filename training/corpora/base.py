"""What every corpus recipe returns: a list of labelled utterances with their speakers.

A recipe (``prepare_cremad``, ``prepare_ravdess``, ``prepare_csv``) walks a folder or a manifest,
maps the corpus's own labels onto the six emotions of ``shared.constants.EMOTIONS``, keeps the
speaker of every clip (speaker-independent cross-validation groups by it), and records the
files it deliberately leaves out, with the reason, so that a report can say what was not used.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.constants import EMOTIONS
from shared.errors import SERError

#: File suffixes the recipes treat as audio (lower case, with the dot).
AUDIO_SUFFIXES: tuple[str, ...] = (".wav", ".flac")


class CorpusError(SERError):
    """A corpus is missing, incomplete, misnamed or mislabelled, or could not be downloaded."""

    error_type = "corpus_error"


@dataclass(frozen=True)
class Utterance:
    """One labelled clip.

    Attributes:
        path: absolute path of the audio file.
        label: one of ``shared.constants.EMOTIONS``.
        speaker: speaker id used for grouping, unique across corpora (``"1001"``, ``"ravdess-07"``).
        meta: corpus-specific facts (sentence, level, sex, age, intensity...); JSON-serialisable values.
    """

    path: Path
    label: str
    speaker: str
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.label not in EMOTIONS:
            raise CorpusError(f"{self.path}: label {self.label!r} is not one of {', '.join(EMOTIONS)}")


@dataclass(frozen=True)
class Corpus:
    """The utterances a recipe found under ``root``, in a stable (sorted by path) order.

    Attributes:
        name: ``"cremad"``, ``"ravdess"`` or ``"csv"``.
        root: the corpus folder (for ``csv``, the manifest's folder).
        utterances: the clips to use.
        excluded: ``(path, reason)`` for every file deliberately left out.
    """

    name: str
    root: Path
    utterances: tuple[Utterance, ...]
    excluded: tuple[tuple[Path, str], ...] = ()

    @property
    def labels(self) -> tuple[str, ...]:
        """The label of every utterance, aligned with ``utterances``."""
        return tuple(u.label for u in self.utterances)

    @property
    def speakers(self) -> tuple[str, ...]:
        """The speaker of every utterance, aligned with ``utterances``."""
        return tuple(u.speaker for u in self.utterances)

    @property
    def speaker_known(self) -> bool:
        """False when some utterance's speaker was not given (``meta["speaker_known"] is False``):
        grouping by speaker is then impossible."""
        return all(u.meta.get("speaker_known", True) for u in self.utterances)

    def summary(self) -> dict[str, Any]:
        """Counts for reports and logs; JSON-serialisable.

        Keys: ``name``, ``root``, ``n_utterances``, ``n_speakers``, ``speaker_known``, ``labels``
        (count per emotion, in ``EMOTIONS`` order, zeros included), ``utterances_per_speaker``,
        ``excluded`` (count), ``excluded_reasons`` (count per reason), ``corpora`` (clips per corpus,
        when utterances record one in ``meta["corpus"]``) and, when any utterance's ``meta`` has a
        ``sex``, ``speakers_by_sex`` and ``utterances_by_sex``.
        """
        label_counts = Counter(u.label for u in self.utterances)
        per_speaker = Counter(u.speaker for u in self.utterances)
        summary: dict[str, Any] = {
            "name": self.name,
            "root": str(self.root),
            "n_utterances": len(self.utterances),
            "n_speakers": len(per_speaker),
            "speaker_known": self.speaker_known,
            "labels": {label: label_counts.get(label, 0) for label in EMOTIONS},
            "utterances_per_speaker": dict(sorted(per_speaker.items())),
            "excluded": len(self.excluded),
            "excluded_reasons": dict(sorted(Counter(reason for _, reason in self.excluded).items())),
        }
        corpora = Counter(str(u.meta["corpus"]) for u in self.utterances if u.meta.get("corpus"))
        if corpora:
            summary["corpora"] = dict(sorted(corpora.items()))
        if any("sex" in u.meta for u in self.utterances):
            sex_of_speaker = {u.speaker: str(u.meta.get("sex") or "unknown") for u in self.utterances}
            summary["speakers_by_sex"] = dict(sorted(Counter(sex_of_speaker.values()).items()))
            summary["utterances_by_sex"] = dict(
                sorted(Counter(sex_of_speaker[u.speaker] for u in self.utterances).items())
            )
        return summary


def is_hidden(path: Path) -> bool:
    """True for dot-files such as macOS ``._name.wav`` resource forks, which are never audio of a corpus."""
    return path.name.startswith(".")


def resolve_strict(strict: bool | None, looks_complete: bool) -> bool:
    """The invariant-checking decision: ``strict`` when given, else whether the corpus looks complete."""
    return looks_complete if strict is None else strict


def format_examples(items: list[str], limit: int = 5) -> str:
    """``"a, b, c"`` with at most ``limit`` items, then ``"... (N more)"``."""
    shown = ", ".join(items[:limit])
    if len(items) > limit:
        shown += f", ... ({len(items) - limit} more)"
    return shown
