"""CREMA-D: the Crowd-sourced Emotional Multimodal Actors Dataset.

About the corpus
----------------
7,442 clips from 91 actors (48 male, 43 female, ages 20-74) each saying some of 12 fixed
sentences in six emotions: anger, disgust, fear, happiness, neutral and sadness (neutral 1,087
clips, each other emotion 1,271). The sentence "It's eleven o'clock" (IEO) was spoken at three
intensity levels (LO, MD, HI); every other clip has level XX (unspecified). The audio is 16 kHz
mono 16-bit WAV, 1.27-5.0 s per clip (about 2.5 s on average, 5.3 h in all). Licence: ODbL 1.0
(database) and DbCL 1.0 (contents). Cao et al., "CREMA-D: Crowd-sourced Emotional Multimodal
Actors Dataset", IEEE Trans. Affective Computing, 2014.

Files are named ``AAAA_SSS_EMO_LVL.wav``: actor 1001-1091, sentence code, emotion code (ANG
DIS FEA HAP NEU SAD) and level. Age and sex per actor come from ``VideoDemographics.csv``.

Things to know:

* The official repository (github.com/CheyneyComputerScience/CREMA-D) keeps the audio in Git
  LFS: a plain clone or zip gives 130-byte pointer files, not audio. ``download_cremad`` fetches
  ``AudioWAV/`` from the LFS media host and checks every file's sha256 and size.
* ``1076_MTI_SAD_XX`` is silent and ``1076_MTI_NEU_XX`` is reported unplayable: both are left out
  (and listed in ``Corpus.excluded``). ``1040_ITH_SAD_XX`` was called ``1040_ITH_SAD_X`` before
  2022; old copies with the short name are accepted.
* Human raters recognised the intended emotion from the voice alone in only about 41% of clips:
  the labels are the actors' intentions, not what listeners perceived.
* Every actor speaks every emotion, so random K-fold puts each actor in both train and test
  folds; speaker-independent (actor-grouped) splits are the honest protocol.
"""

from __future__ import annotations

import csv
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

from shared.constants import EMOTIONS
from training.corpora.base import (
    Corpus,
    CorpusError,
    Utterance,
    format_examples,
    is_hidden,
    resolve_strict,
)
from training.corpora.download import (
    DownloadError,
    DownloadReport,
    RemoteFile,
    download_many,
    looks_like_lfs_pointer,
)

log = logging.getLogger(__name__)

#: The official repository's Git LFS media for ``AudioWAV/`` (a file's URL is this + its name).
CREMAD_MEDIA_URL = "https://media.githubusercontent.com/media/CheyneyComputerScience/CREMA-D/master/AudioWAV/"

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
#: sha256 and size of the 7,442 official ``AudioWAV/*.wav`` files (columns filename, sha256, size).
SHIPPED_CHECKSUMS = DATA_DIR / "cremad_audiowav_lfs.csv"
#: Age, sex, race and ethnicity per actor (the official ``VideoDemographics.csv``).
SHIPPED_DEMOGRAPHICS = DATA_DIR / "cremad_VideoDemographics.csv"
#: The official list of the 7,442 clip names (``SentenceFilenames.csv``).
SHIPPED_FILENAMES = DATA_DIR / "cremad_SentenceFilenames.csv"

EMOTION_CODES: dict[str, str] = {
    "ANG": "angry",
    "DIS": "disgust",
    "FEA": "fear",
    "HAP": "happy",
    "NEU": "neutral",
    "SAD": "sad",
}
LEVELS: dict[str, str] = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified"}
SENTENCES: dict[str, str] = {
    "IEO": "It's eleven o'clock.",
    "TIE": "That is exactly what happened.",
    "IOM": "I'm on my way to the meeting.",
    "IWW": "I wonder what this is about.",
    "TAI": "The airplane is almost full.",
    "MTI": "Maybe tomorrow it will be cold.",
    "IWL": "I would like a new alarm clock.",
    "ITH": "I think I have a doctor's appointment.",
    "DFA": "Don't forget a jacket.",
    "ITS": "I think I've seen this before.",
    "TSI": "The surface is slick.",
    "WSI": "We'll stop in a couple of minutes.",
}
ACTORS = range(1001, 1092)

#: Invariants of the complete corpus.
EXPECTED_CLIPS = 7442
EXPECTED_ACTORS = 91
EXPECTED_PER_LABEL: dict[str, int] = {label: 1087 if label == "neutral" else 1271 for label in EMOTIONS}
#: ``strict=None`` checks the invariants once at least this many clips are present.
STRICT_THRESHOLD = 7000

#: Clips left out on purpose, by canonical name (no suffix).
KNOWN_BAD: dict[str, str] = {
    "1076_MTI_SAD_XX": "silent (a known defect of CREMA-D: the clip holds no speech)",
    "1076_MTI_NEU_XX": "unplayable (a known defect of CREMA-D)",
}
#: Old names still found in copies made before the 2022 rename -> the current name (no suffix).
OLD_NAMES: dict[str, str] = {"1040_ITH_SAD_X": "1040_ITH_SAD_XX"}

_NAME = re.compile(r"^(?P<actor>\d{4})_(?P<sentence>[A-Z]{3})_(?P<emotion>[A-Z]{3})_(?P<level>[A-Z]{2})$")


def _audio_dir_of(data_dir: Path) -> tuple[Path, Path]:
    """``(root, audio_dir)`` for a CREMA-D root holding ``AudioWAV/``, or ``AudioWAV`` itself."""
    data_dir = data_dir.expanduser().resolve()
    if not data_dir.is_dir():
        raise CorpusError(
            f"CREMA-D folder {data_dir} does not exist; fetch the audio with "
            "`python -m training download-cremad` or point at the folder holding AudioWAV/"
        )
    if (data_dir / "AudioWAV").is_dir():
        return data_dir, data_dir / "AudioWAV"
    if data_dir.name == "AudioWAV":
        return data_dir.parent, data_dir
    if any(p.suffix.lower() == ".wav" for p in data_dir.iterdir()):
        return data_dir, data_dir
    raise CorpusError(f"{data_dir} holds neither an AudioWAV/ folder nor CREMA-D .wav files")


def _check_name(stem: str) -> str | None:
    """Why ``stem`` is not a valid CREMA-D clip name, or None when it is."""
    m = _NAME.match(stem)
    if m is None:
        return "does not follow AAAA_SSS_EMO_LVL"
    problems = []
    if int(m["actor"]) not in ACTORS:
        problems.append(f"actor {m['actor']} not in 1001-1091")
    if m["sentence"] not in SENTENCES:
        problems.append(f"unknown sentence {m['sentence']}")
    if m["emotion"] not in EMOTION_CODES:
        problems.append(f"unknown emotion {m['emotion']}")
    if m["level"] not in LEVELS:
        problems.append(f"unknown level {m['level']}")
    return "; ".join(problems) or None


def read_demographics(path: Path) -> dict[str, dict[str, Any]]:
    """``{actor id: {"sex": "male"|"female", "age": int, "race": str, "ethnicity": str}}`` from
    a ``VideoDemographics.csv``.

    Raises:
        CorpusError: the file lacks the ActorID, Age or Sex column, or has an unreadable row.
    """
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = {"ActorID", "Age", "Sex"} - set(reader.fieldnames or ())
        if missing:
            raise CorpusError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        people: dict[str, dict[str, Any]] = {}
        for line, row in enumerate(reader, start=2):
            try:
                people[row["ActorID"].strip()] = {
                    "sex": row["Sex"].strip().lower(),
                    "age": int(row["Age"]),
                    "race": (row.get("Race") or "").strip(),
                    "ethnicity": (row.get("Ethnicity") or "").strip(),
                }
            except (AttributeError, ValueError) as exc:
                raise CorpusError(f"{path}, line {line}: unreadable row ({exc})") from None
    return people


def _find_demographics(*folders: Path) -> Path:
    for folder in folders:
        candidate = folder / "VideoDemographics.csv"
        if candidate.is_file():
            return candidate
    return SHIPPED_DEMOGRAPHICS


def _official_names() -> set[str]:
    with SHIPPED_FILENAMES.open(newline="", encoding="utf-8-sig") as f:
        return {row["Filename"].strip() for row in csv.DictReader(f)}


def prepare_cremad(data_dir: Path, *, strict: bool | None = None) -> Corpus:
    """List CREMA-D's clips with their labels, actors and demographics.

    Args:
        data_dir: the CREMA-D root holding ``AudioWAV/`` (the official layout), or ``AudioWAV``
            itself. Only ``.wav`` files are read; other files (``.mp3``, ``.part``, dot-files) are
            ignored.
        strict: check the complete corpus's invariants (7,442 clips, 91 actors, neutral 1,087 and
            each other emotion 1,271 clips, counted before the known bad clips are left out).
            ``None`` checks when at least 7,000 clips are present.

    Returns:
        A ``Corpus`` named ``"cremad"``; speaker = actor id (``"1001"``); ``meta`` has ``actor``,
        ``sentence`` (code), ``sentence_text``, ``level`` (LO MD HI XX), ``emotion_code`` and,
        when the actor is in ``VideoDemographics.csv`` (``data_dir``'s copy, else the shipped one),
        ``sex`` (``"male"``/``"female"``) and ``age``. The two known bad clips are in ``excluded``.

    Raises:
        CorpusError: the folder is missing; ``.wav`` files do not follow the naming scheme (a few
            listed); the files are Git LFS pointers rather than audio; an invariant fails under
            ``strict``.
    """
    root, audio_dir = _audio_dir_of(Path(data_dir))
    demographics = read_demographics(_find_demographics(Path(data_dir).expanduser().resolve(), root))

    clips: dict[str, Path] = {}  # canonical stem -> file
    renamed: dict[str, str] = {}  # canonical stem -> the old name it was found under
    misnamed: list[str] = []
    pointers: list[str] = []
    excluded: list[tuple[Path, str]] = []
    for path in sorted(audio_dir.iterdir()):
        if is_hidden(path) or not path.is_file() or path.suffix.lower() != ".wav":
            continue
        if path.stat().st_size < 1024:
            with path.open("rb") as f:
                if looks_like_lfs_pointer(f.read(64)):
                    pointers.append(path.name)
                    continue
        stem = OLD_NAMES.get(path.stem, path.stem)
        problem = _check_name(stem)
        if problem:
            misnamed.append(f"{path.name} ({problem})")
            continue
        if stem in clips:
            old, new = (path, clips[stem]) if stem != path.stem else (clips[stem], path)
            excluded.append((old, f"duplicate: old name of {new.name}"))
            clips[stem] = new
            renamed.pop(stem, None)
            continue
        clips[stem] = path
        if stem != path.stem:
            renamed[stem] = path.name

    if pointers:
        raise CorpusError(
            f"{len(pointers)} file(s) in {audio_dir} are Git LFS pointer files, not audio "
            f"(e.g. {format_examples(pointers, 3)}): the folder came from a clone or zip without LFS. "
            "Fetch the audio with `python -m training download-cremad` (download_cremad)."
        )
    if misnamed:
        raise CorpusError(
            f"{len(misnamed)} .wav file(s) in {audio_dir} are not CREMA-D clips named AAAA_SSS_EMO_LVL.wav: "
            + format_examples(misnamed)
        )
    if not clips:
        raise CorpusError(f"no CREMA-D .wav files in {audio_dir}")

    if resolve_strict(strict, len(clips) >= STRICT_THRESHOLD):
        _check_invariants(audio_dir, clips)

    utterances = []
    for stem, path in sorted(clips.items()):
        if stem in KNOWN_BAD:
            excluded.append((path, KNOWN_BAD[stem]))
            continue
        actor, sentence, emotion, level = stem.split("_")
        meta: dict[str, Any] = {
            "actor": actor,
            "sentence": sentence,
            "sentence_text": SENTENCES[sentence],
            "level": level,
            "emotion_code": emotion,
        }
        person = demographics.get(actor)
        if person is not None:
            meta["sex"] = person["sex"]
            meta["age"] = person["age"]
        if stem in renamed:
            meta["renamed_from"] = renamed[stem]
        utterances.append(Utterance(path=path, label=EMOTION_CODES[emotion], speaker=actor, meta=meta))
    return Corpus(
        name="cremad",
        root=root,
        utterances=tuple(utterances),
        excluded=tuple(sorted(excluded)),
    )


def _check_invariants(audio_dir: Path, clips: dict[str, Path]) -> None:
    """Raise ``CorpusError`` unless ``clips`` is the complete official corpus."""
    problems = []
    if len(clips) != EXPECTED_CLIPS:
        problems.append(f"{len(clips):,} clips (expected {EXPECTED_CLIPS:,})")
    actors = {stem[:4] for stem in clips}
    if len(actors) != EXPECTED_ACTORS:
        problems.append(f"{len(actors)} actors (expected {EXPECTED_ACTORS})")
    per_label = Counter(EMOTION_CODES[stem.split("_")[2]] for stem in clips)
    wrong = [
        f"{label} {per_label.get(label, 0):,} (expected {n:,})"
        for label, n in EXPECTED_PER_LABEL.items()
        if per_label.get(label, 0) != n
    ]
    if wrong:
        problems.append("per-emotion counts " + ", ".join(wrong))
    if not problems:
        return
    official = _official_names()
    missing = sorted(official - clips.keys())
    extra = sorted(clips.keys() - official)
    if missing:
        problems.append(f"missing {len(missing)}: {format_examples(missing)}")
    if extra:
        problems.append(f"not in the official list {len(extra)}: {format_examples(extra)}")
    raise CorpusError(
        f"CREMA-D at {audio_dir} is not the complete corpus: "
        + "; ".join(problems)
        + ". Re-run `python -m training download-cremad` (download_cremad) to fetch missing files, "
        "or pass strict=False to use what is there."
    )


def read_checksums(path: Path) -> list[tuple[str, str, int]]:
    """``[(filename, sha256, size)]`` from a CSV with columns filename, sha256, size.

    Raises:
        CorpusError: a column is missing, or a row has an unsafe file name (a path, not a plain
            ``.wav`` name), a malformed sha256 or a non-positive size.
    """
    rows = []
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = {"filename", "sha256", "size"} - set(reader.fieldnames or ())
        if missing:
            raise CorpusError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        for line, row in enumerate(reader, start=2):
            name = (row["filename"] or "").strip()
            digest = (row["sha256"] or "").strip().lower()
            size_text = (row["size"] or "").strip()
            # Names become paths under dest: refuse anything that could climb out of it.
            if not re.fullmatch(r"[A-Za-z0-9_-]+\.wav", name):
                raise CorpusError(f"{path}, line {line}: not a plain .wav file name: {name!r}")
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise CorpusError(f"{path}, line {line}: malformed sha256 {digest!r}")
            if not size_text.isdigit() or int(size_text) <= 0:
                raise CorpusError(f"{path}, line {line}: malformed size {size_text!r}")
            rows.append((name, digest, int(size_text)))
    if not rows:
        raise CorpusError(f"{path}: no files listed")
    return rows


def download_cremad(
    dest: Path,
    *,
    base_url: str = CREMAD_MEDIA_URL,
    checksums: Path | None = None,
    workers: int = 4,
    progress: bool = True,
    limit: int | None = None,
    retries: int = 3,
    backoff_s: float = 1.0,
    timeout_s: float = 60.0,
) -> DownloadReport:
    """Fetch CREMA-D's ``AudioWAV/*.wav`` (about 600 MB) from the official Git LFS media; safe to re-run.

    Files land in ``dest/AudioWAV/``, each verified against its sha256 and size. Files already
    there and verified are skipped; an interrupted file is resumed from its ``.part`` with an
    HTTP Range request; a wrong file is fetched again (``retries`` times, backing off from
    ``backoff_s`` seconds). See ``training.corpora.download.download_file``.

    Args:
        dest: the CREMA-D root to create or complete (``prepare_cremad(dest)`` reads it).
        base_url: where the files are: a file's URL is ``base_url`` + its name.
        checksums: CSV with filename, sha256, size; default the shipped list of the 7,442 files.
        workers: parallel downloads.
        progress: show a tqdm progress bar (bytes).
        limit: fetch only the first ``limit`` files of the list (for a quick look).
        timeout_s: per-request network timeout in seconds.

    Returns:
        A ``DownloadReport`` (downloaded, skipped, failed).

    Raises:
        DownloadError: (a ``CorpusError``) when any file failed after its retries; ``.report``
            holds the whole report and the message lists the failures with their reasons.
        CorpusError: the checksum list is malformed.
    """
    rows = read_checksums(checksums or SHIPPED_CHECKSUMS)
    if limit is not None:
        rows = rows[: max(0, limit)]
    audio_dir = Path(dest).expanduser().resolve() / "AudioWAV"
    audio_dir.mkdir(parents=True, exist_ok=True)
    base = base_url if base_url.endswith("/") else base_url + "/"
    files = [
        RemoteFile(url=base + name, dest=audio_dir / name, digest=digest, size=size)
        for name, digest, size in rows
    ]
    report = download_many(
        files,
        workers=workers,
        retries=retries,
        backoff_s=backoff_s,
        timeout_s=timeout_s,
        progress=progress,
        progress_desc="CREMA-D AudioWAV",
    )
    log.info(
        "CREMA-D download into %s: %d downloaded, %d already present, %d failed",
        audio_dir,
        len(report.downloaded),
        len(report.skipped),
        len(report.failed),
    )
    if report.failed:
        listed = [f"{name}: {reason}" for name, reason in report.failed]
        raise DownloadError(
            f"{len(report.failed)} of {len(files)} CREMA-D files could not be fetched and verified "
            f"({len(report.downloaded)} downloaded, {len(report.skipped)} already present). "
            f"{format_examples(listed, 10)}. "
            "Re-run to retry: verified files are kept and partial ones resumed.",
            report=report,
        )
    return report
