"""Offline mode: a hub id that is not in the local cache fails at once, without the network, saying
where it looked."""

from __future__ import annotations

import logging
import time

import pytest

from shared.backbones import BackboneSpec, EncoderOptions, build_backbone
from shared.errors import BackboneError


def test_offline_a_missing_encoder_fails_fast_and_says_where_it_looked(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    started = time.monotonic()
    with caplog.at_level(logging.WARNING), pytest.raises(BackboneError) as info:
        build_backbone(
            BackboneSpec(kind="hubert", model="example-org/not-cached-encoder"),
            EncoderOptions(offline=True, cache_dir=tmp_path / "ser"),
        )
    assert time.monotonic() - started < 15
    message = str(info.value)
    assert message.startswith("offline mode: the speech encoder 'example-org/not-cached-encoder'")
    assert str(tmp_path / "hub") in message and "the hub was not contacted" in message
    assert "huggingface.co" not in caplog.text  # no request was tried
