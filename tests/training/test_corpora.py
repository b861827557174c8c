"""Corpus recipes on tiny generated corpora, and on the real data under SER_TEST_DATA."""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from shared.constants import EMOTIONS
from training.corpora import (
    CORPORA,
    CorpusError,
    prepare_corpus,
    prepare_cremad,
    prepare_csv,
    prepare_ravdess,
)
from training.corpora.base import Corpus, Utterance
from training.corpora.cremad import (
    EXPECTED_PER_LABEL,
    SHIPPED_CHECKSUMS,
    SHIPPED_DEMOGRAPHICS,
    SHIPPED_FILENAMES,
    read_checksums,
)

SR = 16_000


def _audio_bytes(fmt: str = "WAV", seconds: float = 0.05, freq: float = 220.0) -> bytes:
    t = np.arange(int(SR * seconds)) / SR
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), SR, format=fmt, subtype="PCM_16")
    return buf.getvalue()


WAV = _audio_bytes("WAV")
FLAC = _audio_bytes("FLAC")


def _write(path: Path, data: bytes = WAV) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _shipped_names() -> list[str]:
    with SHIPPED_FILENAMES.open(newline="") as f:
        return [row["Filename"] for row in csv.DictReader(f)]


# --- CREMA-D -----------------------------------------------------------------------------------

CREMAD_CODES = {
    "ANG": "angry",
    "DIS": "disgust",
    "FEA": "fear",
    "HAP": "happy",
    "NEU": "neutral",
    "SAD": "sad",
}


@pytest.fixture
def cremad_root(tmp_path: Path) -> Path:
    """Actors 1001/1002 (DFA, every emotion), IEO levels for 1001, the old short name, the two bad clips,
    and files that are not clips."""
    audio = tmp_path / "CREMA-D" / "AudioWAV"
    for actor in ("1001", "1002"):
        for code in CREMAD_CODES:
            _write(audio / f"{actor}_DFA_{code}_XX.wav")
    for level in ("LO", "MD", "HI"):
        _write(audio / f"1001_IEO_HAP_{level}.wav")
    _write(audio / "1040_ITH_SAD_X.wav")
    _write(audio / "1076_MTI_SAD_XX.wav")
    _write(audio / "1076_MTI_NEU_XX.wav")
    # Not clips: ignored.
    _write(audio / "README.txt", b"notes")
    _write(audio / "1001_DFA_ANG_XX.mp3", b"ID3")
    _write(audio / "1001_TIE_ANG_XX.wav.part", b"RIFF")
    _write(audio / "._1001_DFA_ANG_XX.wav", b"\x00\x05\x16\x07")
    (audio / "subfolder").mkdir()
    return tmp_path / "CREMA-D"


def test_cremad_labels_speakers_and_meta(cremad_root: Path) -> None:
    corpus = prepare_cremad(cremad_root)

    assert corpus.name == "cremad"
    assert corpus.root == cremad_root.resolve()
    names = [u.path.name for u in corpus.utterances]
    assert names == sorted(names)
    assert len(corpus.utterances) == 12 + 3 + 1
    for u in corpus.utterances:
        assert u.path.is_absolute() and u.path.is_file()
        actor, sentence, code, level = u.path.stem.split("_")[:4]
        assert u.label == CREMAD_CODES[code]
        assert u.speaker == actor == u.meta["actor"]
        assert u.meta["sentence"] == sentence
    by_name = {u.path.name: u for u in corpus.utterances}
    first = by_name["1001_DFA_ANG_XX.wav"]
    assert dict(first.meta) == {
        "actor": "1001",
        "sentence": "DFA",
        "sentence_text": "Don't forget a jacket.",
        "level": "XX",
        "emotion_code": "ANG",
        "sex": "male",
        "age": 51,
    }
    assert by_name["1002_DFA_NEU_XX.wav"].meta["sex"] == "female"
    assert by_name["1002_DFA_NEU_XX.wav"].meta["age"] == 21
    assert by_name["1001_IEO_HAP_HI.wav"].meta["level"] == "HI"
    assert by_name["1001_IEO_HAP_HI.wav"].meta["sentence_text"] == "It's eleven o'clock."


def test_cremad_old_short_name_is_accepted(cremad_root: Path) -> None:
    corpus = prepare_cremad(cremad_root)
    old = [u for u in corpus.utterances if u.speaker == "1040"]
    assert len(old) == 1
    assert old[0].path.name == "1040_ITH_SAD_X.wav"
    assert old[0].label == "sad"
    assert old[0].meta["level"] == "XX"
    assert old[0].meta["renamed_from"] == "1040_ITH_SAD_X.wav"


def test_cremad_old_and_new_name_together_keep_the_new(cremad_root: Path) -> None:
    _write(cremad_root / "AudioWAV" / "1040_ITH_SAD_XX.wav")
    corpus = prepare_cremad(cremad_root)
    kept = [u for u in corpus.utterances if u.speaker == "1040"]
    assert [u.path.name for u in kept] == ["1040_ITH_SAD_XX.wav"]
    assert "renamed_from" not in kept[0].meta
    reasons = {p.name: r for p, r in corpus.excluded}
    assert reasons["1040_ITH_SAD_X.wav"] == "duplicate: old name of 1040_ITH_SAD_XX.wav"


def test_cremad_known_bad_clips_are_excluded_with_reason(cremad_root: Path) -> None:
    corpus = prepare_cremad(cremad_root)
    reasons = {p.name: r for p, r in corpus.excluded}
    assert set(reasons) == {"1076_MTI_SAD_XX.wav", "1076_MTI_NEU_XX.wav"}
    assert "silent" in reasons["1076_MTI_SAD_XX.wav"]
    assert "unplayable" in reasons["1076_MTI_NEU_XX.wav"]
    assert not any(u.speaker == "1076" for u in corpus.utterances)
    assert all(p.is_absolute() for p, _ in corpus.excluded)


def test_cremad_summary(cremad_root: Path) -> None:
    summary = prepare_cremad(cremad_root).summary()
    json.dumps(summary)
    assert summary["n_utterances"] == 16
    assert summary["n_speakers"] == 3
    assert summary["labels"] == {
        "neutral": 2,
        "happy": 2 + 3,
        "sad": 2 + 1,
        "angry": 2,
        "fear": 2,
        "disgust": 2,
    }
    assert list(summary["labels"]) == list(EMOTIONS)
    assert summary["utterances_per_speaker"] == {"1001": 9, "1002": 6, "1040": 1}
    assert summary["excluded"] == 2
    assert summary["speakers_by_sex"] == {"female": 1, "male": 2}
    assert summary["utterances_by_sex"] == {"female": 6, "male": 10}
    assert summary["speaker_known"] is True


def test_cremad_rerun_and_audiowav_folder_give_the_same_corpus(cremad_root: Path) -> None:
    first = prepare_cremad(cremad_root)
    assert prepare_cremad(cremad_root) == first
    assert prepare_cremad(cremad_root / "AudioWAV") == first


def test_cremad_demographics_in_data_dir_win_over_the_shipped_copy(cremad_root: Path) -> None:
    (cremad_root / "VideoDemographics.csv").write_text(
        '"ActorID","Age","Sex","Race","Ethnicity"\n1001,77,"Female","Caucasian","Not Hispanic"\n'
    )
    by_actor = {u.speaker: u.meta for u in prepare_cremad(cremad_root).utterances}
    assert by_actor["1001"]["age"] == 77
    assert by_actor["1001"]["sex"] == "female"
    # An actor missing from that file simply has no sex/age.
    assert "sex" not in by_actor["1002"] and "age" not in by_actor["1002"]


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("1001_DFA_ANG.wav", "does not follow"),
        ("1001_DFA_XYZ_XX.wav", "unknown emotion XYZ"),
        ("0999_DFA_ANG_XX.wav", "actor 0999"),
        ("1001_ABC_ANG_XX.wav", "unknown sentence ABC"),
        ("1001_IEO_ANG_ZZ.wav", "unknown level ZZ"),
        ("1001_DFA_ANG_X.wav", "does not follow"),
    ],
)
def test_cremad_misnamed_wav_is_an_error(cremad_root: Path, name: str, why: str) -> None:
    _write(cremad_root / "AudioWAV" / name)
    with pytest.raises(CorpusError) as info:
        prepare_cremad(cremad_root)
    assert name in info.value.message
    assert why in info.value.message
    assert info.value.error_type == "corpus_error"


def test_cremad_lfs_pointers_are_reported(tmp_path: Path) -> None:
    pointer = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 72862\n"
    for code in CREMAD_CODES:
        _write(tmp_path / "AudioWAV" / f"1001_DFA_{code}_XX.wav", pointer)
    with pytest.raises(CorpusError, match="Git LFS pointer files, not audio") as info:
        prepare_cremad(tmp_path)
    assert "download_cremad" in info.value.message


def test_cremad_missing_or_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist"):
        prepare_cremad(tmp_path / "nowhere")
    (tmp_path / "AudioWAV").mkdir()
    with pytest.raises(CorpusError, match="no CREMA-D .wav files"):
        prepare_cremad(tmp_path)


def test_cremad_strict_on_a_partial_corpus_explains_what_is_wrong(cremad_root: Path) -> None:
    prepare_cremad(cremad_root, strict=False)
    prepare_cremad(cremad_root)  # few files: strict=None does not check
    with pytest.raises(CorpusError) as info:
        prepare_cremad(cremad_root, strict=True)
    message = info.value.message
    assert "not the complete corpus" in message
    assert "18 clips (expected 7,442)" in message
    assert "4 actors (expected 91)" in message
    assert "neutral 3 (expected 1,087)" in message
    assert "missing 7424" in message
    assert "strict=False" in message


@pytest.fixture
def full_cremad(tmp_path: Path) -> Path:
    """Every official clip name as a tiny file (the recipe reads names, not audio)."""
    audio = tmp_path / "full" / "AudioWAV"
    audio.mkdir(parents=True)
    for name in _shipped_names():
        (audio / f"{name}.wav").write_bytes(WAV)
    return tmp_path / "full"


def test_cremad_full_corpus_passes_its_invariants(full_cremad: Path) -> None:
    corpus = prepare_cremad(full_cremad)  # >= 7,000 clips: checked
    summary = corpus.summary()
    assert summary["n_utterances"] == 7442 - 2
    assert summary["n_speakers"] == 91
    assert summary["speakers_by_sex"] == {"female": 43, "male": 48}
    assert summary["labels"] == {
        label: n - (1 if label in ("sad", "neutral") else 0) for label, n in EXPECTED_PER_LABEL.items()
    }
    assert summary["excluded"] == 2
    assert all("age" in u.meta for u in corpus.utterances)


def test_cremad_full_corpus_with_missing_files_fails_by_default(full_cremad: Path) -> None:
    audio = full_cremad / "AudioWAV"
    removed = sorted(audio.glob("1091_*.wav"))[:3] + [audio / "1040_ITH_SAD_XX.wav"]
    for path in removed:
        path.unlink()
    with pytest.raises(CorpusError) as info:
        prepare_cremad(full_cremad)
    message = info.value.message
    assert "7,438 clips (expected 7,442)" in message
    assert "missing 4: " in message
    for path in removed:
        assert path.stem in message
    corpus = prepare_cremad(full_cremad, strict=False)
    assert len(corpus.utterances) == 7442 - 4 - 2


def test_cremad_full_corpus_with_an_extra_clip_fails(full_cremad: Path) -> None:
    _write(full_cremad / "AudioWAV" / "1001_TSI_ANG_HI.wav")
    with pytest.raises(CorpusError, match=r"not in the official list 1: 1001_TSI_ANG_HI"):
        prepare_cremad(full_cremad)


def test_shipped_cremad_metadata_is_consistent() -> None:
    rows = read_checksums(SHIPPED_CHECKSUMS)
    names = [name for name, _, _ in rows]
    assert len(names) == len(set(names)) == 7442
    assert {n.removesuffix(".wav") for n in names} == set(_shipped_names())
    per_label = Counter(CREMAD_CODES[n.split("_")[2]] for n in names)
    assert dict(per_label) == EXPECTED_PER_LABEL
    with SHIPPED_DEMOGRAPHICS.open(newline="") as f:
        actors = {row["ActorID"] for row in csv.DictReader(f)}
    assert actors == {n[:4] for n in names}
    assert all(0 < size < 2_000_000 for _, _, size in rows)


# --- RAVDESS -----------------------------------------------------------------------------------

RAVDESS_LABELS = {"01": "neutral", "03": "happy", "04": "sad", "05": "angry", "06": "fear", "07": "disgust"}


def _ravdess_speech_names(actor: int) -> list[str]:
    """The 60 speech clip names of one actor (8 emotions)."""
    names = []
    for emotion in ("01", "02", "03", "04", "05", "06", "07", "08"):
        for intensity in ("01",) if emotion == "01" else ("01", "02"):
            for statement in ("01", "02"):
                for rep in ("01", "02"):
                    names.append(f"03-01-{emotion}-{intensity}-{statement}-{rep}-{actor:02d}")
    return names


@pytest.fixture
def ravdess_root(tmp_path: Path) -> Path:
    """Actors 01 (WAV) and 02 (FLAC), complete speech, plus song, video and junk files."""
    root = tmp_path / "ravdess"
    for actor, (data, ext) in {1: (WAV, "wav"), 2: (FLAC, "flac")}.items():
        for name in _ravdess_speech_names(actor):
            _write(root / f"Actor_{actor:02d}" / f"{name}.{ext}", data)
    _write(root / "song" / "Actor_01" / "03-02-03-01-01-01-01.wav")
    _write(root / "song" / "Actor_01" / "03-02-02-02-01-02-01.wav")
    _write(root / "Actor_01" / "01-01-03-01-01-01-01.mp4", b"video")
    _write(root / "Actor_01" / "notes.txt", b"x")
    _write(root / "Actor_01" / "._03-01-03-01-01-01-01.wav", b"\x00")
    return root


def test_ravdess_labels_speakers_meta_and_exclusions(ravdess_root: Path) -> None:
    corpus = prepare_ravdess(ravdess_root)

    assert corpus.name == "ravdess"
    assert len(corpus.utterances) == 2 * 44
    for u in corpus.utterances:
        fields = u.path.stem.split("-")
        assert u.label == RAVDESS_LABELS[fields[2]]
        assert u.speaker == f"ravdess-{fields[6]}"
        assert u.meta["actor"] == fields[6]
        assert u.meta["intensity"] == {"01": "normal", "02": "strong"}[fields[3]]
        assert u.meta["statement"] == fields[4]
        assert u.meta["repetition"] == int(fields[5])
        assert u.meta["vocal_channel"] == "speech"
        assert u.meta["modality"] == "audio-only"
        assert u.path.is_absolute()
    by_speaker = {u.speaker: u.meta["sex"] for u in corpus.utterances}
    assert by_speaker == {"ravdess-01": "male", "ravdess-02": "female"}
    assert {u.path.suffix for u in corpus.utterances} == {".wav", ".flac"}

    reasons = Counter(reason for _, reason in corpus.excluded)
    assert reasons == {
        "calm: not one of the six emotions": 16,
        "surprised: not one of the six emotions": 16,
        "song (vocal channel 02), not speech": 2,
    }
    summary = corpus.summary()
    json.dumps(summary)
    assert summary["labels"] == {"neutral": 8, "happy": 16, "sad": 16, "angry": 16, "fear": 16, "disgust": 16}
    assert summary["excluded"] == 34
    assert summary["speakers_by_sex"] == {"female": 1, "male": 1}


def test_ravdess_rerun_gives_the_same_corpus(ravdess_root: Path) -> None:
    assert prepare_ravdess(ravdess_root) == prepare_ravdess(ravdess_root)


@pytest.mark.parametrize(
    ("relative", "why"),
    [
        ("Actor_01/03-01-03-01-01-01.wav", "does not follow"),
        ("Actor_01/03-01-09-01-01-01-01.wav", "unknown emotion 09"),
        ("Actor_01/03-03-03-01-01-01-01.wav", "unknown vocal channel 03"),
        ("Actor_01/03-01-01-02-01-01-01.wav", "unknown intensity 02"),  # neutral has no strong intensity
        ("Actor_01/03-01-03-01-01-01-25.wav", "unknown actor 25"),
        ("Actor_02/03-01-03-01-01-01-01.flac", "actor 01 in folder Actor_02"),
    ],
)
def test_ravdess_misnamed_files_are_an_error(ravdess_root: Path, relative: str, why: str) -> None:
    (ravdess_root / "Actor_02" / "03-01-03-01-01-01-02.flac").unlink()  # keep the names unique
    _write(ravdess_root / relative)
    with pytest.raises(CorpusError) as info:
        prepare_ravdess(ravdess_root)
    assert relative in info.value.message
    assert why in info.value.message


def test_ravdess_same_clip_twice_is_an_error(ravdess_root: Path) -> None:
    _write(ravdess_root / "Actor_01" / "03-01-03-01-01-01-01.flac", FLAC)
    with pytest.raises(CorpusError, match="appear twice"):
        prepare_ravdess(ravdess_root)


def test_ravdess_missing_or_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist"):
        prepare_ravdess(tmp_path / "nowhere")
    _write(tmp_path / "Actor_01" / "03-01-02-01-01-01-01.wav")  # calm only
    with pytest.raises(CorpusError, match="no RAVDESS speech clips"):
        prepare_ravdess(tmp_path)


def test_ravdess_strict_on_a_partial_corpus(ravdess_root: Path) -> None:
    (ravdess_root / "Actor_01" / "03-01-04-02-02-02-01.wav").unlink()
    prepare_ravdess(ravdess_root)  # 2 of 24 actors: not checked
    with pytest.raises(CorpusError) as info:
        prepare_ravdess(ravdess_root, strict=True)
    message = info.value.message
    assert "not the complete speech corpus" in message
    assert "actors missing: 03, 04," in message
    assert "actor 01: sad 7/8" in message


@pytest.fixture
def full_ravdess(tmp_path: Path) -> Path:
    root = tmp_path / "full"
    for actor in range(1, 25):
        folder = root / f"Actor_{actor:02d}"
        folder.mkdir(parents=True)
        for name in _ravdess_speech_names(actor):
            (folder / f"{name}.wav").write_bytes(WAV)
    return root


def test_ravdess_full_corpus_invariants(full_ravdess: Path) -> None:
    corpus = prepare_ravdess(full_ravdess)
    summary = corpus.summary()
    assert summary["n_utterances"] == 1056
    assert summary["n_speakers"] == 24
    assert set(summary["utterances_per_speaker"].values()) == {44}
    assert summary["excluded"] == 24 * 16

    (full_ravdess / "Actor_17" / "03-01-06-02-01-01-17.wav").unlink()
    with pytest.raises(CorpusError, match=r"actor 17: fear 7/8"):
        prepare_ravdess(full_ravdess)  # all 24 actors present: checked by default
    assert len(prepare_ravdess(full_ravdess, strict=False).utterances) == 1055


# --- CSV manifest ------------------------------------------------------------------------------


def _manifest(path: Path, rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


@pytest.fixture
def csv_root(tmp_path: Path) -> Path:
    root = tmp_path / "mine"
    _write(root / "clips" / "a.wav")
    _write(root / "clips" / "b.flac", FLAC)
    _write(root / "c.wav")
    _write(tmp_path / "elsewhere" / "d.wav")
    return root


def test_csv_manifest_paths_synonyms_and_meta(csv_root: Path) -> None:
    elsewhere = (csv_root.parent / "elsewhere" / "d.wav").resolve()
    manifest = _manifest(
        csv_root / "manifest.csv",
        [
            ["Path", "Label", "Speaker", "session"],
            ["clips/a.wav", " Fearful ", "s1", "am"],
            ["clips/b.flac", "anger", "s1", "pm"],
            ["c.wav", "Happiness", "s2", ""],
            [str(elsewhere), "SADNESS", "s3", "am"],
        ],
    )
    corpus = prepare_csv(manifest)
    assert corpus.name == "csv"
    assert corpus.root == csv_root.resolve()
    assert [u.path for u in corpus.utterances] == [
        (csv_root / "clips" / "a.wav").resolve(),
        (csv_root / "clips" / "b.flac").resolve(),
        (csv_root / "c.wav").resolve(),
        elsewhere,
    ]
    assert corpus.labels == ("fear", "angry", "happy", "sad")
    assert corpus.speakers == ("s1", "s1", "s2", "s3")
    assert dict(corpus.utterances[0].meta) == {"session": "am", "row": 2, "speaker_known": True}
    assert corpus.summary()["speaker_known"] is True
    assert prepare_csv(manifest) == corpus
    assert prepare_csv(csv_root) == corpus  # a folder holding manifest.csv


@pytest.mark.parametrize(
    ("text", "label"),
    [("disgusted", "disgust"), ("JOY", "happy"), ("afraid", "fear"), ("Neutral", "neutral"), ("sad", "sad")],
)
def test_csv_label_synonyms(csv_root: Path, text: str, label: str) -> None:
    manifest = _manifest(csv_root / "m.csv", [["path", "label", "speaker"], ["c.wav", text, "x"]])
    assert prepare_csv(manifest).labels == (label,)


def test_csv_unknown_labels_list_their_lines_and_the_accepted_labels(csv_root: Path) -> None:
    manifest = _manifest(
        csv_root / "m.csv",
        [
            ["path", "label", "speaker"],
            ["clips/a.wav", "happy", "s1"],
            ["clips/b.flac", "calm", "s1"],
            ["c.wav", "surprised", "s2"],
        ],
    )
    with pytest.raises(CorpusError) as info:
        prepare_csv(manifest)
    message = info.value.message
    assert "2 row(s) with a label that is not one of the six emotions" in message
    assert "line 3: 'calm'" in message
    assert "line 4: 'surprised'" in message
    assert "neutral, happy, sad, angry, fear, disgust" in message


def test_csv_missing_files_are_listed_up_to_ten(csv_root: Path) -> None:
    rows = [["path", "label", "speaker"], ["c.wav", "sad", "s"]]
    rows += [[f"gone/{i}.wav", "sad", "s"] for i in range(12)]
    with pytest.raises(CorpusError) as info:
        prepare_csv(_manifest(csv_root / "m.csv", rows))
    message = info.value.message
    assert "12 file(s) not found" in message
    assert str((csv_root / "gone" / "0.wav").resolve()) in message
    assert "line 3:" in message
    assert "gone/9.wav" in message and "gone/10.wav" not in message
    assert "(2 more)" in message


def test_csv_without_speaker_column_warns_and_marks_speakers_unknown(csv_root: Path) -> None:
    manifest = _manifest(csv_root / "m.csv", [["path", "label"], ["clips/a.wav", "sad"], ["c.wav", "angry"]])
    with pytest.warns(UserWarning, match="no speaker column"):
        corpus = prepare_csv(manifest)
    assert corpus.speakers == ("clips/a.wav", "c.wav")
    assert all(u.meta["speaker_known"] is False for u in corpus.utterances)
    assert corpus.summary()["speaker_known"] is False


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([["file", "label"], ["c.wav", "sad"]], "lacks column"),
        ([["path", "label", "speaker"]], "lists no clips"),
        ([["path", "label", "speaker"], ["c.wav", "sad", ""]], "line 2: empty speaker"),
        ([["path", "label", "speaker"], ["", "sad", "s"]], "line 2: empty path"),
        ([["path", "label", "speaker"], ["c.wav", "sad"]], "line 2: 2 fields"),
        ([["path", "label", "speaker"], ["c.wav", "sad", "s"], ["./c.wav", "sad", "s"]], "listed twice"),
        ([["path", "label", "label"], ["c.wav", "sad", "sad"]], "duplicate column"),
    ],
)
def test_csv_malformed_manifests(csv_root: Path, rows: list[list[str]], match: str) -> None:
    with pytest.raises(CorpusError, match=match):
        prepare_csv(_manifest(csv_root / "m.csv", rows))


def test_csv_missing_or_empty_manifest(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist"):
        prepare_csv(tmp_path / "none.csv")
    with pytest.raises(CorpusError, match="does not exist"):
        prepare_csv(tmp_path)  # folder without manifest.csv
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(CorpusError, match="is empty"):
        prepare_csv(tmp_path / "empty.csv")


# --- dispatch and the data types ---------------------------------------------------------------


def test_prepare_corpus_dispatches(cremad_root: Path, ravdess_root: Path, csv_root: Path) -> None:
    assert CORPORA == ("cremad", "ravdess", "csv")
    assert prepare_corpus("cremad", cremad_root, strict=False) == prepare_cremad(cremad_root)
    assert prepare_corpus("ravdess", ravdess_root) == prepare_ravdess(ravdess_root)
    _manifest(csv_root / "manifest.csv", [["path", "label", "speaker"], ["c.wav", "sad", "s"]])
    assert prepare_corpus("csv", csv_root).labels == ("sad",)
    with pytest.raises(CorpusError, match="unknown corpus 'iemocap'; known corpora: cremad, ravdess, csv"):
        prepare_corpus("iemocap", cremad_root)
    with pytest.raises(CorpusError, match="bad options"):
        prepare_corpus("csv", csv_root, strict=True)


def test_utterance_rejects_labels_outside_the_six(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="'calm' is not one of"):
        Utterance(path=tmp_path / "x.wav", label="calm", speaker="s")


def test_empty_corpus_summary(tmp_path: Path) -> None:
    summary = Corpus(name="csv", root=tmp_path, utterances=()).summary()
    assert summary["n_utterances"] == 0
    assert summary["labels"] == dict.fromkeys(EMOTIONS, 0)
    assert "speakers_by_sex" not in summary
    json.dumps(summary)


# --- real data ---------------------------------------------------------------------------------


def _real_data(sub: str) -> Path:
    root = os.environ.get("SER_TEST_DATA")
    if not root:
        pytest.skip("SER_TEST_DATA is not set: this test needs the real speech data folder")
    path = Path(root) / sub
    assert path.exists(), f"SER_TEST_DATA is set but {path} does not exist"
    return path


@pytest.mark.realdata
def test_real_ravdess16k() -> None:
    corpus = prepare_ravdess(_real_data("ravdess16k"))  # all 24 actors: invariants checked
    summary = corpus.summary()
    assert summary["n_utterances"] == 1056
    assert summary["n_speakers"] == 24
    # Neutral has no strong intensity: 4 clips per actor, the other five emotions 8.
    assert summary["labels"] == {
        "neutral": 96,
        "happy": 192,
        "sad": 192,
        "angry": 192,
        "fear": 192,
        "disgust": 192,
    }
    assert set(summary["utterances_per_speaker"].values()) == {44}
    assert summary["speakers_by_sex"] == {"female": 12, "male": 12}
    assert summary["excluded"] == 0
    assert {u.path.suffix for u in corpus.utterances} == {".flac"}


@pytest.mark.realdata
def test_real_cremad_sample() -> None:
    root = _real_data("cremad_sample")
    corpus = prepare_cremad(root)  # the AudioMP3 folder beside AudioWAV is ignored
    assert len(corpus.utterances) == 12
    assert set(corpus.speakers) == {"1001", "1002"}
    assert Counter(corpus.labels) == dict.fromkeys(EMOTIONS, 2)
    meta = {u.speaker: (u.meta["sex"], u.meta["age"]) for u in corpus.utterances}
    assert meta == {"1001": ("male", 51), "1002": ("female", 21)}
    assert all(u.path.parent == (root / "AudioWAV").resolve() for u in corpus.utterances)


@pytest.mark.realdata
def test_shipped_cremad_metadata_matches_the_official_copies() -> None:
    meta = _real_data("cremad_meta")
    assert SHIPPED_CHECKSUMS.read_bytes() == (meta / "audiowav_lfs.csv").read_bytes()
    assert SHIPPED_DEMOGRAPHICS.read_bytes() == (meta / "VideoDemographics.csv").read_bytes()
    assert SHIPPED_FILENAMES.read_bytes() == (meta / "SentenceFilenames.csv").read_bytes()
    listed = {name for name, _, _ in read_checksums(SHIPPED_CHECKSUMS)}
    sample = {p.name for p in (_real_data("cremad_sample") / "AudioWAV").glob("*.wav")}
    assert len(sample) == 12 and sample <= listed
