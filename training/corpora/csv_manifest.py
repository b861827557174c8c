"""Any corpus described by a CSV manifest: one row per clip, with its label and speaker.

The manifest has a header row. Columns:

* ``path`` (required): the audio file; relative paths resolve against the manifest's folder.
* ``label`` (required): one of the six emotions (``neutral happy sad angry fear disgust``), any
  case; common synonyms are accepted (``fearful``, ``anger``, ``happiness``, ``joy``,
  ``sadness``, ``disgusted``...). Labels outside the six (``calm``, ``surprise``) are refused:
  leave such rows out of the manifest.
* ``speaker`` (optional but recommended): who speaks. Without it every clip is its own group,
  ``meta["speaker_known"]`` is False, and speaker-independent cross-validation is impossible.
* ``corpus`` (optional): which corpus a clip comes from, for a manifest that mixes several; each
  speaker is then named ``<corpus>:<speaker>`` (one id in two corpora is two speakers) and training
  reports a leave-one-corpus-out table.
* any other column is copied into ``meta`` as text.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Any

from shared.constants import EMOTIONS
from training.corpora.base import Corpus, CorpusError, Utterance, format_examples

MANIFEST_NAME = "manifest.csv"

#: Accepted spellings (lower case, stripped) -> label.
LABEL_SYNONYMS: dict[str, str] = {
    **{label: label for label in EMOTIONS},
    "neu": "neutral",
    "happiness": "happy",
    "joy": "happy",
    "hap": "happy",
    "sadness": "sad",
    "anger": "angry",
    "ang": "angry",
    "fearful": "fear",
    "afraid": "fear",
    "fea": "fear",
    "disgusted": "disgust",
    "dis": "disgust",
}

_MAX_LISTED = 10


def normalise_label(text: str) -> str | None:
    """The emotion ``text`` names (case and surrounding spaces ignored), or None when it names none."""
    return LABEL_SYNONYMS.get(text.strip().lower())


def prepare_csv(manifest: Path) -> Corpus:
    """Read a CSV manifest (see the module docstring for its columns).

    Args:
        manifest: the CSV file, or a folder holding ``manifest.csv``.

    Returns:
        A ``Corpus`` named ``"csv"`` rooted at the manifest's folder, in the manifest's row order;
        ``meta`` holds ``row`` (the line number in the file), ``speaker_known`` and the extra
        columns. Without a ``speaker`` column the speaker is the file's path relative to the root
        (every clip its own group) and a ``UserWarning`` says so.

    Raises:
        CorpusError: the manifest is missing or empty; ``path`` or ``label`` columns are missing;
            rows have unknown labels (line numbers and the accepted labels listed), an empty path
            or speaker, a path listed twice, or files that do not exist (up to 10 listed).
    """
    manifest = Path(manifest).expanduser().resolve()
    if manifest.is_dir():
        manifest = manifest / MANIFEST_NAME
    if not manifest.is_file():
        raise CorpusError(f"manifest {manifest} does not exist")
    root = manifest.parent

    with manifest.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = [name.strip().lower() for name in next(reader)]
        except StopIteration:
            raise CorpusError(f"manifest {manifest} is empty") from None
        missing_columns = [c for c in ("path", "label") if c not in header]
        if missing_columns:
            raise CorpusError(
                f"manifest {manifest} lacks column(s) {', '.join(missing_columns)}; "
                f"its header is: {', '.join(header) or '(empty)'}"
            )
        if len(set(header)) != len(header):
            raise CorpusError(f"manifest {manifest} has duplicate column names: {', '.join(header)}")
        has_speaker = "speaker" in header
        rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]

    bad_labels: list[str] = []
    bad_rows: list[str] = []
    missing_files: list[str] = []
    duplicates: list[str] = []
    seen: dict[Path, int] = {}
    utterances: list[Utterance] = []
    for line, cells in rows:
        if len(cells) != len(header):
            bad_rows.append(f"line {line}: {len(cells)} fields, the header has {len(header)}")
            continue
        record = {name: cell.strip() for name, cell in zip(header, cells, strict=True)}
        label = normalise_label(record["label"])
        if label is None:
            bad_labels.append(f"line {line}: {record['label']!r}")
        if not record["path"]:
            bad_rows.append(f"line {line}: empty path")
            continue
        if has_speaker and not record["speaker"]:
            bad_rows.append(f"line {line}: empty speaker")
        path = (root / Path(record["path"]).expanduser()).resolve()
        if path in seen:
            duplicates.append(f"line {line}: {record['path']} (also line {seen[path]})")
            continue
        seen[path] = line
        if not path.is_file():
            missing_files.append(f"line {line}: {path}")
            continue
        if label is None:
            continue
        meta: dict[str, Any] = {
            name: value for name, value in record.items() if name not in ("path", "label", "speaker")
        }
        meta["row"] = line
        meta["speaker_known"] = has_speaker
        speaker = record["speaker"] if has_speaker else _relative_name(path, root)
        if record.get("corpus"):
            speaker = f"{record['corpus']}:{speaker}"
        utterances.append(Utterance(path=path, label=label, speaker=speaker, meta=meta))

    problems = []
    if bad_labels:
        accepted = ", ".join(EMOTIONS)
        problems.append(
            f"{len(bad_labels)} row(s) with a label that is not one of the six emotions ({accepted}; "
            f"synonyms such as fearful, anger, happiness, sadness, disgusted are accepted): "
            + format_examples(bad_labels, _MAX_LISTED)
        )
    if bad_rows:
        problems.append(f"{len(bad_rows)} malformed row(s): " + format_examples(bad_rows, _MAX_LISTED))
    if duplicates:
        problems.append(
            f"{len(duplicates)} path(s) listed twice: " + format_examples(duplicates, _MAX_LISTED)
        )
    if missing_files:
        problems.append(
            f"{len(missing_files)} file(s) not found: " + format_examples(missing_files, _MAX_LISTED)
        )
    if problems:
        raise CorpusError(f"manifest {manifest}: " + "; ".join(problems))
    if not utterances:
        raise CorpusError(f"manifest {manifest} lists no clips")
    if not has_speaker:
        warnings.warn(
            f"manifest {manifest} has no speaker column: every clip is its own group, so "
            "speaker-independent evaluation is impossible",
            UserWarning,
            stacklevel=2,
        )
    return Corpus(name="csv", root=root, utterances=tuple(utterances))


def _relative_name(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()
