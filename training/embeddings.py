"""Embedding extraction with a resumable on-disk cache.

The cache is one ``.npz`` file per backbone configuration, named by a digest of everything that
changes the embeddings (the backbone spec, the precision it ran in and the checkpoint's own
fingerprint). Inside, each embedding is keyed by the sha256 of its audio file's bytes, so renaming or
moving a corpus keeps its cache, and an edited file is embedded again. The cache is written atomically
every few batches: an interrupted extraction resumes where it stopped.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from shared.audio import decode_audio
from shared.backbones import Backbone, EncoderOptions
from shared.batch.ray_engine import RaySettings
from shared.bundle import sha256_file
from shared.errors import SERError

log = logging.getLogger(__name__)


def backbone_cache_key(backbone: Backbone) -> str:
    """The cache file stem for a backbone: its spec, precision and checkpoint fingerprint."""
    return backbone.spec.cache_key(dtype=backbone.dtype, extra=dict(backbone.fingerprint))


class EmbeddingCache:
    """Embeddings of one backbone configuration, keyed by audio content hash, stored in one ``.npz``."""

    def __init__(self, path: Path, dim: int) -> None:
        self.path = path
        self.dim = dim
        self._store: dict[str, np.ndarray] = {}
        self._dirty = False
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as data:
                    keys, values = data["keys"], data["embeddings"]
                if values.ndim == 2 and values.shape[1] == dim:
                    self._store = {str(k): v for k, v in zip(keys, values, strict=True)}
                else:
                    log.warning("ignoring cache %s: its embeddings are not %d-d", path, dim)
            except (OSError, KeyError, ValueError) as exc:
                log.warning("ignoring unreadable cache %s: %s", path, exc)

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, key: str) -> bool:
        return key in self._store

    def get(self, key: str) -> np.ndarray | None:
        return self._store.get(key)

    def put(self, key: str, embedding: np.ndarray) -> None:
        self._store[key] = np.asarray(embedding, dtype=np.float32)
        self._dirty = True

    def save(self) -> None:
        """Write the cache atomically (a temporary file renamed over the old one)."""
        if not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = np.array(sorted(self._store), dtype=str)
        values = (
            np.stack([self._store[k] for k in keys]) if len(keys) else np.zeros((0, self.dim), np.float32)
        )
        fd, tmp = tempfile.mkstemp(prefix=self.path.name, suffix=".tmp.npz", dir=self.path.parent)
        os.close(fd)
        try:
            np.savez(tmp, keys=keys, embeddings=values)
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self._dirty = False


@dataclass
class ExtractionResult:
    """Embeddings of the files that could be used, and why the others could not.

    Attributes:
        embeddings: float32 ``[n_ok, d]``, rows aligned with ``ok`` (indices into the input list).
        ok: indices of the input paths that were embedded.
        failed: ``(index, reason)`` for each input that could not be decoded or embedded.
        cached: how many embeddings came from the cache.
    """

    embeddings: np.ndarray
    ok: list[int]
    failed: list[tuple[int, str]] = field(default_factory=list)
    cached: int = 0


def extract_embeddings(
    paths: Sequence[Path],
    backbone: Backbone,
    *,
    cache_dir: Path | None = None,
    batch_size: int = 8,
    progress: bool = True,
    save_every: int = 20,
    decode: Callable[[Path], np.ndarray] = decode_audio,
    ray: RaySettings | None = None,
    encoder: EncoderOptions | None = None,
) -> ExtractionResult:
    """Embed audio files with ``backbone``, reusing and filling the cache in ``cache_dir``.

    Files that cannot be decoded or embedded are reported in ``failed`` rather than stopping the run.
    ``batch_size`` files are decoded and embedded together; the cache is saved every ``save_every``
    batches and at the end.

    With ``ray``, the files not in the cache are embedded on that Ray cluster instead: decoded in CPU
    tasks and embedded by replicas of the same backbone (its spec, run as ``encoder`` says), the rows
    coming back here to fill the same cache (``shared.batch.ray_engine``).
    """
    cache = (
        EmbeddingCache(
            Path(cache_dir) / f"{backbone.spec.kind}-{backbone_cache_key(backbone)}.npz", backbone.dim
        )
        if cache_dir is not None
        else None
    )
    hashes = [sha256_file(Path(p)) for p in paths]
    result: dict[int, np.ndarray] = {}
    failed: list[tuple[int, str]] = []
    todo: list[int] = []
    for i, digest in enumerate(hashes):
        hit = cache.get(digest) if cache is not None else None
        if hit is not None:
            result[i] = hit
        else:
            todo.append(i)
    cached = len(result)
    if todo:
        log.info("embedding %d files (%d from cache) with %s", len(todo), cached, backbone.spec.kind)
    bar = tqdm(total=len(todo), desc="embedding", unit="clip", disable=not progress or not todo)
    if ray is not None:
        try:
            _embed_on_ray(
                paths, todo, backbone, encoder, ray, batch_size, cache, save_every, bar, result, failed
            )
        finally:
            bar.close()
            if cache is not None:
                cache.save()
        todo = []
    try:
        for n_batch, start in enumerate(range(0, len(todo), batch_size), start=1):
            idx = todo[start : start + batch_size]
            waves, good = [], []
            for i in idx:
                try:
                    waves.append(decode(Path(paths[i])))
                    good.append(i)
                except SERError as exc:
                    failed.append((i, str(exc)))
            if waves:
                try:
                    embedded = backbone.embed_batch(waves)
                except SERError:
                    embedded = None
                if embedded is None:  # find the culprit: embed one at a time
                    embedded_rows: list[np.ndarray | None] = []
                    for i, wave in zip(good, waves, strict=True):
                        try:
                            embedded_rows.append(backbone.embed_batch([wave])[0])
                        except SERError as exc:
                            failed.append((i, str(exc)))
                            embedded_rows.append(None)
                    pairs = [(i, row) for i, row in zip(good, embedded_rows, strict=True) if row is not None]
                else:
                    pairs = list(zip(good, embedded, strict=True))
                for i, row in pairs:
                    result[i] = row
                    if cache is not None:
                        cache.put(hashes[i], row)
            bar.update(len(idx))
            if cache is not None and n_batch % save_every == 0:
                cache.save()
    finally:
        bar.close()
        if cache is not None:
            cache.save()
    ok = sorted(result)
    embeddings = (
        np.stack([result[i] for i in ok]).astype(np.float32)
        if ok
        else np.zeros((0, backbone.dim), np.float32)
    )
    for i, reason in failed:
        log.warning("skipping %s: %s", paths[i], reason)
    return ExtractionResult(embeddings=embeddings, ok=ok, failed=sorted(failed), cached=cached)


def _embed_on_ray(
    paths: Sequence[Path],
    todo: list[int],
    backbone: Backbone,
    encoder: EncoderOptions | None,
    ray: RaySettings,
    batch_size: int,
    cache: EmbeddingCache | None,
    save_every: int,
    bar: Any,
    result: dict[int, np.ndarray],
    failed: list[tuple[int, str]],
) -> None:
    """Embed ``paths[i]`` for each ``i`` in ``todo`` on Ray, into ``result``, ``failed`` and the cache."""
    from shared.batch.pipeline import Decoder, EmbeddingModel
    from shared.batch.ray_engine import run_ray

    index: dict[str, list[int]] = {}
    for i in todo:
        index.setdefault(str(paths[i]), []).append(i)
    since_save = 0

    def collect(results: list[list[dict[str, Any]]]) -> None:
        nonlocal since_save
        for rows in results:
            row = rows[0]
            for i in index.pop(row["path"], []):  # a file that came back twice is taken once
                if row["ok"]:
                    result[i] = row["embedding"]
                    if cache is not None:
                        cache.put(row["sha256"], row["embedding"])
                else:
                    failed.append((i, str(row["error"])))
        bar.update(len(results))
        since_save += len(results)
        if cache is not None and since_save >= save_every * batch_size:
            cache.save()
            since_save = 0

    model = EmbeddingModel(backbone.spec, encoder or EncoderOptions())
    run_ray(list(index), Decoder(), model, collect, ray, batch_size=batch_size)
    for indices in index.values():
        failed.extend((i, "not embedded") for i in indices)
