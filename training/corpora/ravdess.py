"""RAVDESS: the Ryerson Audio-Visual Database of Emotional Speech and Song.

About the corpus
----------------
24 professional actors (12 male with odd ids, 12 female with even ids) speak two neutral
North-American English statements ("Kids are talking by the door", "Dogs are sitting by the
door") in eight emotions: neutral, calm, happy, sad, angry, fearful, surprise and disgust; every
emotion but neutral at two intensities (normal, strong), each statement twice. That is 60 speech
clips per actor (4 neutral + 7 emotions x 8), 1,440 in all, as 48 kHz 16-bit WAV; the corpus
also has sung versions and video. Licence: CC BY-NC-SA 4.0. Livingstone & Russo, "The Ryerson
Audio-Visual Database of Emotional Speech and Song (RAVDESS)", PLoS ONE, 2018.

Files are named ``MM-CC-EE-II-SS-RR-AA.ext``: modality (01 audio-video, 02 video-only,
03 audio-only), vocal channel (01 speech, 02 song), emotion (01 neutral, 02 calm, 03 happy, 04 sad,
05 angry, 06 fearful, 07 disgust, 08 surprised), intensity (01 normal, 02 strong), statement
(01, 02), repetition (01, 02) and actor (01-24), in folders ``Actor_NN``.

Things to know:

* Only the six emotions this project serves are kept: calm and surprised clips, and song, are
  left out (and listed in ``Corpus.excluded``). What remains is 44 speech clips per actor,
  1,056 in all (neutral 96, each other emotion 192).
* Every actor speaks the same two sentences in every emotion: the corpus is small and very
  uniform, and actor-grouped splits are the honest protocol.
* ``.wav`` (the 48 kHz originals) and ``.flac`` (for example a 16 kHz copy) are both read.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from shared.constants import EMOTIONS
from training.corpora.base import (
    AUDIO_SUFFIXES,
    Corpus,
    CorpusError,
    Utterance,
    format_examples,
    is_hidden,
    resolve_strict,
)

#: Emotion code -> our label, or None for emotions left out.
EMOTION_CODES: dict[str, str | None] = {
    "01": "neutral",
    "02": None,  # calm
    "03": "happy",
    "04": "sad",
    "05": "angry",
    "06": "fear",
    "07": "disgust",
    "08": None,  # surprised
}
_EXCLUDED_EMOTIONS = {"02": "calm", "08": "surprised"}
MODALITIES = {"01": "audio-video", "02": "video-only", "03": "audio-only"}
VOCAL_CHANNELS = {"01": "speech", "02": "song"}
INTENSITIES = {"01": "normal", "02": "strong"}
STATEMENTS = {"01": "Kids are talking by the door.", "02": "Dogs are sitting by the door."}

#: Invariants of the complete speech corpus, six emotions kept.
EXPECTED_ACTORS = 24
EXPECTED_PER_ACTOR: dict[str, int] = {label: 4 if label == "neutral" else 8 for label in EMOTIONS}

_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")
_ACTOR_FOLDER = re.compile(r"^Actor_(\d\d)$")


def _check_fields(fields: tuple[str, ...]) -> str | None:
    modality, channel, emotion, intensity, statement, repetition, actor = fields
    problems = []
    if modality not in MODALITIES:
        problems.append(f"modality {modality}")
    if channel not in VOCAL_CHANNELS:
        problems.append(f"vocal channel {channel}")
    if emotion not in EMOTION_CODES:
        problems.append(f"emotion {emotion}")
    if intensity not in INTENSITIES or (emotion == "01" and intensity != "01"):
        problems.append(f"intensity {intensity}")
    if statement not in STATEMENTS:
        problems.append(f"statement {statement}")
    if repetition not in ("01", "02"):
        problems.append(f"repetition {repetition}")
    if not 1 <= int(actor) <= EXPECTED_ACTORS:
        problems.append(f"actor {actor}")
    return ("unknown " + ", ".join(problems)) if problems else None


def prepare_ravdess(data_dir: Path, *, strict: bool | None = None) -> Corpus:
    """List RAVDESS's speech clips of the six emotions with their actors.

    Args:
        data_dir: a folder holding ``Actor_NN/`` folders (searched recursively, so the speech and
            song archives may be unpacked side by side) of ``.wav`` or ``.flac`` files. Other
            files (``.mp4`` video, dot-files, documents) are ignored.
        strict: check the complete corpus's invariants (44 kept clips per actor: 4 neutral and 8
            of each other emotion). ``None`` checks when all 24 actors are present.

    Returns:
        A ``Corpus`` named ``"ravdess"``; speaker ``"ravdess-AA"``; ``meta`` has ``actor`` (``"07"``),
        ``sex``, ``intensity`` (``"normal"``/``"strong"``), ``statement`` (code), ``statement_text``,
        ``repetition`` (1 or 2), ``modality`` and ``vocal_channel``. Calm, surprised and song clips
        are in ``excluded`` with the reason.

    Raises:
        CorpusError: the folder is missing or holds no clips; audio files do not follow the
            naming scheme or sit in another actor's folder (a few listed); the same clip appears
            twice; an invariant fails under ``strict``.
    """
    root = Path(data_dir).expanduser().resolve()
    if not root.is_dir():
        raise CorpusError(f"RAVDESS folder {root} does not exist")

    utterances: list[Utterance] = []
    excluded: list[tuple[Path, str]] = []
    misnamed: list[str] = []
    seen: dict[str, Path] = {}
    duplicates: list[str] = []
    for path in sorted(root.rglob("*")):
        if is_hidden(path) or path.suffix.lower() not in AUDIO_SUFFIXES or not path.is_file():
            continue
        m = _NAME.match(path.stem)
        problem = "does not follow MM-CC-EE-II-SS-RR-AA" if m is None else _check_fields(m.groups())
        folder = _ACTOR_FOLDER.match(path.parent.name)
        if m is not None and problem is None and folder is not None and folder[1] != m[7]:
            problem = f"actor {m[7]} in folder {path.parent.name}"
        if problem or m is None:
            misnamed.append(f"{path.relative_to(root)} ({problem})")
            continue
        if path.stem in seen:
            duplicates.append(f"{seen[path.stem].relative_to(root)} and {path.relative_to(root)}")
            continue
        seen[path.stem] = path
        modality, channel, emotion, intensity, statement, repetition, actor = m.groups()
        label = EMOTION_CODES[emotion]
        if channel == "02":
            excluded.append((path, "song (vocal channel 02), not speech"))
            continue
        if label is None:
            excluded.append((path, f"{_EXCLUDED_EMOTIONS[emotion]}: not one of the six emotions"))
            continue
        meta: dict[str, Any] = {
            "actor": actor,
            "sex": "male" if int(actor) % 2 else "female",
            "intensity": INTENSITIES[intensity],
            "statement": statement,
            "statement_text": STATEMENTS[statement],
            "repetition": int(repetition),
            "modality": MODALITIES[modality],
            "vocal_channel": VOCAL_CHANNELS[channel],
            "emotion_code": emotion,
        }
        utterances.append(Utterance(path=path, label=label, speaker=f"ravdess-{actor}", meta=meta))

    if misnamed:
        raise CorpusError(
            f"{len(misnamed)} audio file(s) under {root} are not RAVDESS clips named "
            f"MM-CC-EE-II-SS-RR-AA in their Actor_NN folder: {format_examples(misnamed)}"
        )
    if duplicates:
        raise CorpusError(
            f"{len(duplicates)} RAVDESS clip(s) appear twice under {root} (keep one copy): "
            + format_examples(duplicates)
        )
    if not utterances:
        raise CorpusError(f"no RAVDESS speech clips of the six emotions under {root}")

    actors = {u.meta["actor"] for u in utterances}
    if resolve_strict(strict, len(actors) == EXPECTED_ACTORS):
        _check_invariants(root, utterances)
    return Corpus(
        name="ravdess",
        root=root,
        utterances=tuple(utterances),
        excluded=tuple(excluded),
    )


def _check_invariants(root: Path, utterances: list[Utterance]) -> None:
    """Raise ``CorpusError`` unless every one of the 24 actors has its 44 clips."""
    per_actor: dict[str, Counter[str]] = defaultdict(Counter)
    for u in utterances:
        per_actor[u.meta["actor"]][u.label] += 1
    problems = []
    absent = [f"{n:02d}" for n in range(1, EXPECTED_ACTORS + 1) if f"{n:02d}" not in per_actor]
    if absent:
        problems.append(f"actors missing: {', '.join(absent)}")
    for actor, counts in sorted(per_actor.items()):
        wrong = [
            f"{label} {counts.get(label, 0)}/{n}"
            for label, n in EXPECTED_PER_ACTOR.items()
            if counts.get(label, 0) != n
        ]
        if wrong:
            problems.append(f"actor {actor}: {', '.join(wrong)}")
    if problems:
        expected = sum(EXPECTED_PER_ACTOR.values())
        raise CorpusError(
            f"RAVDESS at {root} is not the complete speech corpus ({expected} clips of the six "
            f"emotions per actor expected, {len(utterances)} clips found): "
            + format_examples(problems, 8)
            + ". Pass strict=False to use what is there."
        )


#: The official speech archive (Zenodo record 1188976) and the MD5 the record publishes for it.
RAVDESS_SPEECH_URL = "https://zenodo.org/records/1188976/files/Audio_Speech_Actors_01-24.zip?download=1"
RAVDESS_SPEECH_MD5 = "bc696df654c87fed845eb13823edef8a"
RAVDESS_SPEECH_ZIP = "Audio_Speech_Actors_01-24.zip"


def download_ravdess(
    dest: Path,
    *,
    url: str = RAVDESS_SPEECH_URL,
    md5: str = RAVDESS_SPEECH_MD5,
    progress: bool = True,
    retries: int = 3,
    backoff_s: float = 1.0,
    timeout_s: float = 60.0,
    keep_archive: bool = False,
) -> Corpus:
    """Fetch RAVDESS's speech archive (about 200 MB) from Zenodo, verify its MD5, unpack the
    ``Actor_NN/*.wav`` files into ``dest`` and check the corpus; safe to re-run.

    The archive is downloaded with ``training.corpora.download`` (resumable, verified, failing fast when
    the server cannot be reached). Its size is asked of the server first (``HEAD``). A ``dest`` that
    already holds the 1,440 speech files is left as it is.

    Returns:
        ``prepare_ravdess(dest)``.

    Raises:
        DownloadError: the archive cannot be fetched or does not verify. CorpusError: the archive does not
            hold RAVDESS's speech files.
    """
    import zipfile

    import httpx

    from training.corpora.download import CONNECT_TIMEOUT_S, DownloadError, RemoteFile, download_many

    dest = Path(dest).expanduser().resolve()
    if len(list(dest.glob("Actor_[0-9][0-9]/03-01-*.wav"))) >= 1440:
        return prepare_ravdess(dest)
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / RAVDESS_SPEECH_ZIP
    try:
        head = httpx.head(
            url, follow_redirects=True, timeout=httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S)
        )
    except httpx.HTTPError as exc:
        raise DownloadError(
            f"cannot reach {url.split('?')[0]}: {type(exc).__name__}: {exc}; check the network and run the "
            "same command again (or unzip a copy of the archive into the folder)"
        ) from None
    size = head.headers.get("content-length", "")
    if head.status_code != 200 or not size.isdigit():
        raise DownloadError(f"{url}: HTTP {head.status_code}, no size given; the archive cannot be fetched")
    report = download_many(
        [RemoteFile(url, archive, md5, int(size), algorithm="md5")],
        workers=1,
        retries=retries,
        backoff_s=backoff_s,
        timeout_s=timeout_s,
        progress=progress,
        progress_desc="RAVDESS speech",
    )
    if report.failed:
        raise DownloadError(
            f"{archive.name} could not be fetched and verified ({report.failed[0][1]}); run the same command "
            "again: it resumes",
            report,
        )
    with zipfile.ZipFile(archive) as zf:
        members = [m for m in zf.namelist() if _ARCHIVE_MEMBER.match(m)]
        if not members:
            raise CorpusError(
                f"{archive.name} holds no Actor_NN/03-01-*.wav files: not RAVDESS's speech archive"
            )
        for member in members:  # only the names checked above: no path leaves dest
            zf.extract(member, dest)
    if not keep_archive:
        archive.unlink()
    return prepare_ravdess(dest)


_ARCHIVE_MEMBER = re.compile(r"^Actor_\d\d/03-01-\d\d-\d\d-\d\d-\d\d-\d\d\.wav$")
