"""Corpus recipes: turn a corpus on disk into labelled utterances with speakers.

One module per corpus (``cremad``, ``ravdess``, ``csv_manifest``), each opening with an "About the
corpus" docstring; ``prepare_corpus`` picks one by name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.corpora.base import Corpus, CorpusError, Utterance
from training.corpora.cremad import download_cremad, prepare_cremad
from training.corpora.csv_manifest import prepare_csv
from training.corpora.download import DownloadError, DownloadReport
from training.corpora.ravdess import download_ravdess, prepare_ravdess

__all__ = [
    "CORPORA",
    "Corpus",
    "CorpusError",
    "DownloadError",
    "DownloadReport",
    "Utterance",
    "download_cremad",
    "download_ravdess",
    "combine_corpora",
    "corpus_of",
    "prepare_corpora",
    "prepare_corpus",
    "prepare_cremad",
    "prepare_csv",
    "prepare_ravdess",
]

CORPORA: tuple[str, ...] = ("cremad", "ravdess", "csv")


def prepare_corpus(name: str, data_dir: Path, **options: Any) -> Corpus:
    """Run the recipe called ``name`` on ``data_dir``.

    Args:
        name: one of ``CORPORA``.
        data_dir: the corpus folder; for ``"csv"``, the manifest file or a folder holding
            ``manifest.csv``.
        options: passed to the recipe (``strict=`` for ``cremad`` and ``ravdess``).

    Raises:
        CorpusError: unknown name, an option the recipe does not take, or the recipe's own errors.
    """
    recipes: dict[str, Callable[..., Corpus]] = {
        "cremad": prepare_cremad,
        "ravdess": prepare_ravdess,
        "csv": prepare_csv,
    }
    recipe = recipes.get(name)
    if recipe is None:
        raise CorpusError(f"unknown corpus {name!r}; known corpora: {', '.join(CORPORA)}")
    try:
        inspect.signature(recipe).bind(Path(data_dir), **options)
    except TypeError as exc:
        raise CorpusError(f"corpus {name!r}: bad options {sorted(options)} ({exc})") from None
    return recipe(Path(data_dir), **options)


def corpus_of(utterance: Utterance, default: str) -> str:
    """The corpus an utterance comes from: its ``meta["corpus"]`` (a CSV's ``corpus`` column, or set by
    ``combine_corpora``), else ``default``."""
    return str(utterance.meta.get("corpus") or default)


def combine_corpora(corpora: list[Corpus]) -> Corpus:
    """Several corpora as one: each utterance records its corpus in ``meta["corpus"]`` and its speaker
    becomes ``"<corpus>:<speaker>"``, so speakers of different corpora never merge. A corpus given twice
    is told apart by its position (``csv1``, ``csv2``).

    Raises:
        CorpusError: no corpus given.
    """
    if not corpora:
        raise CorpusError("no corpus given")
    if len(corpora) == 1:
        return corpora[0]
    names = [c.name for c in corpora]
    labels = [n if names.count(n) == 1 else f"{n}{i + 1}" for i, n in enumerate(names)]
    utterances: list[Utterance] = []
    excluded: list[tuple[Path, str]] = []
    for label, corpus in zip(labels, corpora, strict=True):
        for u in corpus.utterances:
            meta = {**u.meta, "corpus": label}
            utterances.append(Utterance(u.path, u.label, f"{label}:{u.speaker}", meta))
        excluded.extend(corpus.excluded)
    return Corpus(
        name="+".join(labels), root=corpora[0].root, utterances=tuple(utterances), excluded=tuple(excluded)
    )


def prepare_corpora(pairs: list[tuple[str, Path]]) -> Corpus:
    """Run each ``(name, folder)`` recipe and ``combine_corpora`` the results (one pair: that corpus as is)."""
    return combine_corpora([prepare_corpus(name, data_dir) for name, data_dir in pairs])
