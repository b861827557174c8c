"""Schemathesis against the real server's ``/openapi.json``: every operation, examples, coverage,
fuzzing and stateful phases, time-bounded; no 5xx and no answer outside its declared schema, status
codes, content types or headers. The default run generates a few dozen cases per operation; the slow
run, hundreds."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import hardening

CHECKS = "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance,response_headers_conformance"


def _schemathesis() -> str:
    found = Path(sys.executable).with_name("schemathesis")
    if found.exists():
        return str(found)
    which = shutil.which("schemathesis")
    if which is None:
        pytest.skip("schemathesis is not installed (it is in the dev extras: pip install -e '.[dev]')")
    return which


def _fuzz(tmp_path: Path, examples: int, env: dict[str, str], headers: list[str]) -> str:
    command = [
        _schemathesis(),
        "run",
        "",
        "--checks",
        CHECKS,
        "--max-examples",
        str(examples),
        "--no-color",
        "--seed",
        "1",
    ]
    for header in headers:
        command += ["--header", header]
    with hardening.running_server(tmp_path, {"SER_REQUIRE_SPEECH": "true", **env}) as server:
        command[2] = f"{server.url}/openapi.json"
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        log = server.log_text()
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert " passed" in output and "failures" not in output.split("SUMMARY")[-1], output[-4000:]
    assert "Traceback" not in log, log[-4000:]
    return output


def test_fuzzing_every_operation_finds_no_server_error_or_schema_violation(tmp_path: Path) -> None:
    _fuzz(tmp_path, 25, {}, [])


def test_fuzzing_with_api_keys_finds_no_server_error_or_schema_violation(tmp_path: Path) -> None:
    key = "fuzz-key-0123456789abcdef"
    _fuzz(tmp_path, 15, {"SER_API_KEYS": key, "SER_AUTH_MAX_FAILURES": "100000"}, [f"X-API-Key: {key}"])


@pytest.mark.slow
def test_long_fuzzing_run(tmp_path: Path) -> None:
    _fuzz(tmp_path, 300, {}, [])
