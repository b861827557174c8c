from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_support import TEST_UPLOAD_LIMIT, encode_formats, ready_client
from support import synthetic_clip

from service.app import create_app
from service.settings import ServiceSettings


@pytest.fixture(scope="session")
def egemaps_settings(egemaps_bundle: Path) -> ServiceSettings:
    return ServiceSettings(bundle=egemaps_bundle, max_upload_bytes=TEST_UPLOAD_LIMIT, device="cpu")


@pytest.fixture(scope="session")
def egemaps_client(egemaps_settings: ServiceSettings) -> Iterator[TestClient]:
    """One in-process app serving the eGeMAPS bundle, shared by the session (its lifespan runs)."""
    with TestClient(create_app(egemaps_settings)) as client:
        yield ready_client(client)


@pytest.fixture(scope="session")
def clip_formats() -> dict[str, bytes]:
    """A 2 s generated clip in nine formats."""
    return encode_formats(synthetic_clip("angry", 2.0, seed=11))


@pytest.fixture(scope="session")
def good_wav() -> bytes:
    from support import wav_bytes

    return wav_bytes(synthetic_clip("happy", 1.5, seed=3))
