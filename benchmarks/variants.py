"""What is compared: the variants (naive baseline, the project's torch and ONNX backbones), the random-weight
models they run, and the clips the embeddings are compared on."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.constants import SAMPLE_RATE
from shared.signals import speech_like

ALL_VARIANTS = ("naive", "torch-fp32", "torch-bf16", "onnx-fp32", "onnx-int8")

#: facebook/hubert-large-ll60k's architecture.
LARGE_CONFIG: dict[str, Any] = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "feat_extract_norm": "layer",
    "do_stable_layer_norm": True,
    "conv_bias": True,
}
#: A HuBERT small enough for a smoke test (hidden size 16, 3 layers).
TINY_CONFIG: dict[str, Any] = {
    "hidden_size": 16,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "conv_dim": (16,) * 7,
    "feat_extract_norm": "layer",
    "do_stable_layer_norm": True,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 2,
}


@dataclass(frozen=True)
class Variant:
    """One way of computing embeddings: ``backend`` naive/torch/onnx/onnx-int8 and its precision."""

    name: str
    backend: str
    dtype: str

    @classmethod
    def parse(cls, name: str) -> Variant:
        if name == "naive":
            return cls(name, "naive", "fp32")
        if name in ("torch-fp32", "torch-bf16"):
            return cls(name, "torch", name.split("-")[1])
        if name == "onnx-fp32":
            return cls(name, "onnx", "fp32")
        if name == "onnx-int8":
            return cls(name, "onnx-int8", "int8")
        raise SystemExit(f"unknown variant {name!r}; accepted: {', '.join(ALL_VARIANTS)}, default")


def default_variant_name() -> str:
    """The variant the project's default (``dtype="auto"``, torch) resolves to on this machine."""
    import torch

    from shared.backbones.runtime import resolve_dtype

    return f"torch-{resolve_dtype('auto', torch.device('cpu'))}"


class NaiveEncoder:
    """The baseline: transformers as its documentation uses it. The feature extractor, then
    ``HubertModel`` in fp32 with every layer, one clip at a time, mean over frames."""

    dtype = "fp32"

    def __init__(self, folder: Path, layer: int | None) -> None:
        from transformers import AutoFeatureExtractor, AutoModel

        self.extractor = AutoFeatureExtractor.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()
        self.layer = layer

    def embed_batch(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        out = []
        for wave in waveforms:
            inputs = self.extractor(wave, sampling_rate=SAMPLE_RATE, return_tensors="pt")
            with torch.inference_mode():
                result = self.model(inputs["input_values"], output_hidden_states=self.layer is not None)
            hidden = result.last_hidden_state if self.layer is None else result.hidden_states[self.layer]
            out.append(hidden[0].mean(dim=0).float().numpy())
        return np.stack(out)


def build_variant(variant: Variant, folder: Path, spec: Any, cache_dir: Path, threads: int | None) -> Any:
    from shared.backbones import EncoderOptions, build_backbone

    if variant.backend == "naive":
        return NaiveEncoder(folder, spec.layer)
    options = EncoderOptions(
        backend=variant.backend,
        dtype=variant.dtype if variant.backend == "torch" else "fp32",
        threads=threads,
        cache_dir=cache_dir,
        offline=True,
    )
    return build_backbone(spec, options)


# -- inputs -------------------------------------------------------------------------------------


def accuracy_clips(n: int) -> tuple[list[np.ndarray], str]:
    """``n`` different clips: RAVDESS speech from ``$SER_TEST_DATA`` when set, else generated ones."""
    from shared.audio import load_audio

    data = os.environ.get("SER_TEST_DATA")
    folder = Path(data) / "ravdess16k" if data else None
    if folder is not None and folder.is_dir():
        files = sorted(folder.glob("Actor_*/*.*"))
        if len(files) >= n:
            step = len(files) // n
            # Different actors and, with this stride, mostly different emotions.
            chosen = [files[i * step + (i * 7) % step] for i in range(n)]
            return [load_audio(p.read_bytes()) for p in chosen], f"ravdess16k ({n} files)"
    return [speech_like(2.0 + 0.25 * (i % 5), seed=1000 + i) for i in range(n)], f"generated ({n} clips)"


def make_model(kind: str, folder: Path) -> dict[str, Any]:
    """Save a random-weight HuBERT (``large`` or ``tiny``) with its feature extractor; returns its config."""
    import torch
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    config = HubertConfig(**(LARGE_CONFIG if kind == "large" else TINY_CONFIG))
    torch.manual_seed(0)
    model = HubertModel(config)
    model.save_pretrained(folder)
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=SAMPLE_RATE, do_normalize=True, return_attention_mask=True
    ).save_pretrained(folder)
    return {"kind": kind, "parameters": sum(p.numel() for p in model.parameters()), **config.to_dict()}


#: The hub id and commit a ``*-hub`` benchmark model is saved under (a stand-in for the real download).
HUB_STANDIN_ID = "facebook/hubert-large-ll60k"
HUB_STANDIN_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def save_as_hub_download(folder: Path, cache: Path, repo_id: str, commit: str = HUB_STANDIN_COMMIT) -> Path:
    """Lay the model saved in ``folder`` out as a years-old hub repository downloaded by ``huggingface_hub``:
    ``<cache>/models--org--name/refs/main`` naming ``commit``, and ``snapshots/<commit>/`` holding its
    ``config.json``, ``preprocessor_config.json`` and only a ``pytorch_model.bin`` whose weight-norm
    tensors carry the old names (``weight_g``, ``weight_v``), as checkpoints converted from fairseq do.
    Returns the snapshot folder; point ``HF_HUB_CACHE`` at ``cache``.
    """
    import shutil

    import torch
    from safetensors.torch import load_file

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    legacy = {}
    for name, tensor in load_file(str(folder / "model.safetensors")).items():
        name = name.replace("parametrizations.weight.original0", "weight_g")
        name = name.replace("parametrizations.weight.original1", "weight_v")
        legacy[name] = tensor
    torch.save(legacy, snapshot / "pytorch_model.bin")
    del legacy
    for fname in ("config.json", "preprocessor_config.json"):
        shutil.copy(folder / fname, snapshot / fname)
    return snapshot
