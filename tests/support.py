"""Test helpers: generated audio, a tiny HuBERT saved to a folder, and small real bundles.

Nothing here fakes a model: the tiny HuBERT is a real ``HubertModel`` graph with random weights, loaded
through the production code path, and the bundles are real fitted pipelines written by ``save_bundle``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from shared.backbones import BackboneSpec, build_backbone
from shared.constants import EMOTIONS, SAMPLE_RATE

#: Each synthetic "emotion" is a voiced sound with its own pitch and tremolo, so classes are separable.
_PITCH = {"neutral": 110.0, "happy": 240.0, "sad": 90.0, "angry": 170.0, "fear": 300.0, "disgust": 140.0}
_TREMOLO = {"neutral": 0.0, "happy": 6.0, "sad": 1.0, "angry": 9.0, "fear": 12.0, "disgust": 3.0}

DATA_ENV = "SER_TEST_DATA"


def real_data_dir() -> Path | None:
    """The real speech folder named by ``SER_TEST_DATA``, or None."""
    value = os.environ.get(DATA_ENV)
    return Path(value) if value and Path(value).is_dir() else None


def synthetic_clip(
    label: str, seconds: float = 1.5, seed: int = 0, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """A voiced, speech-like test signal for ``label``: float32 ``[seconds * sample_rate]`` in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = _PITCH[label] * (1 + 0.03 * rng.standard_normal()) * (1 + 0.05 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 1 + 0.5 * np.sin(2 * np.pi * _TREMOLO[label] * t)
    noise = 0.02 * rng.standard_normal(t.shape)
    clip = 0.25 * voiced * envelope / 2.6 + noise
    return clip.astype(np.float32)


def wav_bytes(wave: np.ndarray, sample_rate: int = SAMPLE_RATE, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, sample_rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def make_tiny_hubert(
    folder: Path, *, layer_norm: bool = True, layers: int = 3, seed: int = 0, **config: Any
) -> Path:
    """Save a tiny random-weight HuBERT (hidden size 16) with ``save_pretrained``; returns the folder.

    ``config``: more ``HubertConfig`` settings (``conv_bias=True``...).
    """
    import torch
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    hubert_config = HubertConfig(
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(16,) * 7,
        feat_extract_norm="layer" if layer_norm else "group",
        do_stable_layer_norm=layer_norm,
        # An even kernel (trimmed like HuBERT-large's 128) that CPUs' bf16 grouped-convolution kernels
        # compute right; some get kernels of 8, 12, 16... wrong with 8 channels a group (see
        # shared.backbones.torch.precision.half_conv_error).
        num_conv_pos_embeddings=10,
        num_conv_pos_embedding_groups=2,
        **config,
    )
    torch.manual_seed(seed)
    HubertModel(hubert_config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=SAMPLE_RATE, do_normalize=layer_norm, return_attention_mask=layer_norm
    ).save_pretrained(folder)
    return folder


def relative_error(reference: np.ndarray, other: np.ndarray) -> float:
    """Mean distance to the reference relative to the mean distance between different clips."""
    from shared.backbones.base import relative_embedding_error

    return relative_embedding_error(reference, other)


def synthetic_dataset(
    per_class: int = 8, seconds: float = 1.5
) -> tuple[list[np.ndarray], list[str], list[str]]:
    """Generated clips, labels and fake speaker ids (4 speakers)."""
    waves, labels, speakers = [], [], []
    for c, label in enumerate(EMOTIONS):
        for i in range(per_class):
            waves.append(synthetic_clip(label, seconds * (0.8 + 0.4 * (i % 3) / 2), seed=100 * c + i))
            labels.append(label)
            speakers.append(f"spk{i % 4}")
    return waves, labels, speakers


def build_synthetic_bundle(
    artifacts: Path, spec: BackboneSpec, *, name: str = "synthetic", version: str = "1", per_class: int = 8
) -> Path:
    """Fit the real pipelines on generated clips embedded by ``spec``'s backbone and write a bundle (with
    the training recipe's own ``fit_bundle``; its 4 speakers give it a session classifier)."""
    from training.recipe import fit_bundle

    waves, labels, speakers = synthetic_dataset(per_class)
    backbone = build_backbone(spec)
    return fit_bundle(
        backbone.embed_batch(waves),
        labels,
        backbone,
        artifacts,
        name=name,
        version=version,
        training={"corpus": "synthetic", "n_utterances": len(waves)},
        speakers=speakers,
    )


RAVDESS_CODES = {"neutral": "01", "happy": "03", "sad": "04", "angry": "05", "fear": "06", "disgust": "07"}


def fake_ravdess(root: Path, actors: int = 4) -> Path:
    """A small RAVDESS-shaped corpus of generated voices (the real naming scheme and folder layout)."""
    for actor in range(1, actors + 1):
        folder = root / f"Actor_{actor:02d}"
        folder.mkdir(parents=True)
        for label, code in RAVDESS_CODES.items():
            for intensity in ("01",) if label == "neutral" else ("01", "02"):
                for statement in ("01", "02"):
                    seed = hash((actor, label, intensity, statement)) % 10_000
                    wave = synthetic_clip(label, 1.3 + 0.1 * int(statement), seed=seed)
                    sf.write(folder / f"03-01-{code}-{intensity}-{statement}-01-{actor:02d}.wav", wave, 16000)
    return root


#: The commit id of the hub stand-in's snapshot (any 40 hex digits; the hub uses git commit ids).
STANDIN_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def make_hub_standin(cache: Path, repo_id: str, *, layers: int = 3, seed: int = 0, **config: Any) -> Path:
    """A Hugging Face hub cache holding ``repo_id`` as a years-old conversion would: a tiny HuBERT saved by
    ``benchmarks.variants.save_as_hub_download`` (only ``pytorch_model.bin``, old weight-norm names, the
    hub cache's layout, snapshot ``STANDIN_COMMIT``). Returns the snapshot folder; point ``HF_HUB_CACHE``
    at ``cache``."""
    import tempfile

    from benchmarks.variants import save_as_hub_download

    with tempfile.TemporaryDirectory() as work:
        folder = make_tiny_hubert(Path(work) / "model", layers=layers, seed=seed, **config)
        return save_as_hub_download(folder, cache, repo_id, STANDIN_COMMIT)
