"""File digests, read in 1 MiB blocks (bundles, embedding caches, checkpoints and downloads use them)."""

from __future__ import annotations

import hashlib
import os


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes by ``algorithm`` (any of ``hashlib``'s)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file's bytes."""
    return file_digest(path, "sha256")
