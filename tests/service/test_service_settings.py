"""Settings from SER_* variables, the command line of ``python -m service``, and a light import."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.__main__ import parse_args
from service.settings import ServiceSettings
from shared.backbones import EncoderOptions

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("SER_") or key == "HF_HUB_OFFLINE":
            monkeypatch.delenv(key)


def test_defaults_are_the_documented_ones() -> None:
    s = ServiceSettings()
    assert s.bundle is None and s.artifacts == Path("artifacts") and not s.stay_up_on_failure
    assert (s.host, s.port, s.device, s.dtype, s.backend) == ("127.0.0.1", 8000, "auto", "auto", "auto")
    assert s.max_upload_bytes == 25 * 1024 * 1024
    assert (s.min_seconds, s.max_seconds, s.silence_dbfs) == (0.5, 30.0, -60.0)
    assert (s.max_batch_size, s.max_batch_wait_ms, s.queue_depth, s.max_batch_files) == (8, 10.0, 64, 16)
    assert 1 <= s.worker_threads <= 4
    assert s.cors_origins == [] and s.api_keys == []
    assert s.offline is False
    for name, field in ServiceSettings.model_fields.items():
        assert field.description, f"{name} has no description"


def test_environment_variables_are_read_with_the_ser_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "SER_BUNDLE": "/models/emo",
        "SER_PORT": "9000",
        "SER_HOST": "0.0.0.0",
        "SER_DEVICE": "cuda:1",
        "SER_API_KEYS": "key-one, key-two ,key-three",
        "SER_CORS_ORIGINS": '["http://a.example", "http://b.example"]',
        "SER_MAX_UPLOAD_BYTES": "1000",
        "SER_LOG_LEVEL": "debug",
        "SER_LOG_JSON": "true",
        "SER_HF_OFFLINE": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s = ServiceSettings()
    assert s.bundle == Path("/models/emo") and s.port == 9000 and s.host == "0.0.0.0" and s.device == "cuda:1"
    assert s.api_keys == ["key-one", "key-two", "key-three"]
    assert s.cors_origins == ["http://a.example", "http://b.example"]
    assert s.max_upload_bytes == 1000 and s.log_level == "DEBUG" and s.log_json and s.offline
    public = s.public_dict()
    assert "api_keys" not in public and public["api_keys_configured"] == 3
    assert "key-" not in str(public)


def test_the_encoder_options_come_from_the_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SER_ONNX_CACHE", str(tmp_path / "exports"))
    monkeypatch.setenv("SER_TORCH_THREADS", "3")
    monkeypatch.setenv("SER_BACKEND", "onnx-int8")
    options = ServiceSettings(max_batch_size=4, window_seconds=12.5).encoder_options()
    assert options == EncoderOptions(
        device="auto",
        dtype="auto",
        backend="onnx-int8",
        threads=3,
        max_batch_size=4,
        window_seconds=12.5,
        cache_dir=tmp_path / "cache",
        onnx_cache_dir=tmp_path / "exports",
    )
    shown = options.to_dict()
    assert shown["cache_dir"] == str(tmp_path / "cache") and shown["onnx_cache_dir"] == str(
        tmp_path / "exports"
    )
    assert ServiceSettings().encoder_options().to_dict()["onnx_cache_dir"] == str(tmp_path / "exports")


def test_hf_hub_offline_implies_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert ServiceSettings().offline is True


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("SER_MIN_SECONDS", "40", "min_seconds (40.0) must be below max_seconds (30.0)"),
        ("SER_DEVICE", "tpu", "should match pattern"),
        ("SER_DTYPE", "int8", "fp32"),
        ("SER_QUEUE_DEPTH", "0", "greater than or equal to 1"),
        ("SER_PORT", "70000", "less than or equal to 65535"),
    ],
)
def test_invalid_settings_are_refused(
    monkeypatch: pytest.MonkeyPatch, field: str, value: str, message: str
) -> None:
    monkeypatch.setenv(field, value)
    with pytest.raises(ValidationError, match=re.escape(message)):
        ServiceSettings()


def test_command_line_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SER_PORT", "9000")
    args = parse_args(["--port", "9100", "--bundle", "/b", "--host", "0.0.0.0"])
    overrides = {"host": args.host, "port": args.port, "bundle": args.bundle}
    s = ServiceSettings(**overrides)
    assert (s.host, s.port, s.bundle) == ("0.0.0.0", 9100, Path("/b"))
    assert parse_args([]).port is None


def test_importing_and_building_the_app_loads_no_model_code() -> None:
    code = (
        "import sys\n"
        "from service.app import create_app\n"
        "from service.settings import ServiceSettings\n"
        "create_app(ServiceSettings(bundle='does-not-matter'))\n"
        "heavy = [m for m in ('torch', 'transformers', 'sklearn', 'opensmile', 'skops', 'training') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
