"""The compose files: valid against the Compose Specification, every path they name there, the training
job's command parsed by the real ``python -m training`` parser."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from deploy_support import (
    BASE_COMPOSE,
    DOCKERFILE,
    GPU_COMPOSE,
    REPO,
    SCHEMA_PATH,
    USER_DATA_BINDS,
    compose_documents,
    duration_seconds,
    excluded_from_context,
    interpolate_defaults,
    load_yaml,
    merge_compose,
    parse_mounts,
    schema_errors,
)

# --- the compose files -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(compose_documents()))
def test_compose_files_validate_against_the_compose_spec(name: str) -> None:
    document = compose_documents()[name]
    assert schema_errors(document) == []
    assert schema_errors(interpolate_defaults(document)) == []


def test_the_vendored_schema_is_the_one_its_notice_describes() -> None:
    notice = (SCHEMA_PATH.parent / "compose-spec.NOTICE.md").read_text()
    digest = hashlib.sha256(SCHEMA_PATH.read_bytes()).hexdigest()
    assert digest in notice, "compose-spec.json changed: update compose-spec.NOTICE.md with its origin"


def test_the_schema_check_rejects_what_compose_rejects() -> None:
    document = load_yaml(BASE_COMPOSE)
    document["services"]["api"]["helthcheck"] = {"test": ["CMD", "true"]}
    document["services"]["train"]["restart"] = ["no"]
    errors = schema_errors(document)
    assert any("helthcheck" in e for e in errors), errors
    assert any(e.startswith("services/train/restart") for e in errors), errors


def test_compose_files_use_no_obsolete_version_key() -> None:
    for path in (BASE_COMPOSE, GPU_COMPOSE):
        assert "version" not in load_yaml(path), f"{path.name}: the Compose Specification has no version key"


def test_every_named_volume_is_declared() -> None:
    document = load_yaml(BASE_COMPOSE)
    declared = set(document.get("volumes") or {})
    assert {"artifacts", "hf-cache"} <= declared
    for name, service in document["services"].items():
        for mount in parse_mounts(service):
            if not mount.is_bind:
                assert mount.source in declared, f"{name}: volume {mount.source!r} is not declared"


def test_build_context_and_dockerfile_exist() -> None:
    for name, service in merge_compose(load_yaml(BASE_COMPOSE), load_yaml(GPU_COMPOSE))["services"].items():
        build = interpolate_defaults(service["build"])
        context = (BASE_COMPOSE.parent / build["context"]).resolve()
        assert context == REPO, f"{name}: the build context must be the repository root"
        assert (context / build["dockerfile"]).resolve() == DOCKERFILE
        for arg in build.get("args", {}):
            assert re.search(rf"^ARG {arg}\b", DOCKERFILE.read_text(), re.M), f"{name}: no ARG {arg}"


def test_bind_mount_sources_exist_or_are_user_data_outside_the_build_context() -> None:
    for name, service in load_yaml(BASE_COMPOSE)["services"].items():
        for mount in parse_mounts(service):
            if not mount.is_bind:
                continue
            source = (BASE_COMPOSE.parent / mount.source).resolve()
            if mount.target in USER_DATA_BINDS:
                # A corpus the user downloads there; it must never be sent to the image build.
                relative = source.relative_to(REPO).as_posix()
                assert excluded_from_context(relative), f"{name}: {relative} would enter the build context"
                assert excluded_from_context(f"{relative}/AudioWAV/1001_DFA_ANG_XX.wav")
            else:
                assert source.exists(), f"{name}: bind source {mount.source} does not exist"


def test_api_service_serves_read_only_artifacts_with_a_generous_healthcheck() -> None:
    api = interpolate_defaults(load_yaml(BASE_COMPOSE)["services"]["api"])
    assert "8000:8000" in api["ports"]
    assert api["environment"]["SER_HOST"] == "0.0.0.0"
    assert api["environment"]["SER_ARTIFACTS"] == "/artifacts"
    assert str(api["environment"]["SER_PORT"]) == "8000"
    mounts = {m.target: m for m in parse_mounts(api)}
    assert mounts["/artifacts"].source == "artifacts" and mounts["/artifacts"].read_only
    assert mounts["/cache/huggingface"].source == "hf-cache" and not mounts["/cache/huggingface"].read_only
    # jobs survive a restart: their database lives in a volume the service writes
    assert api["environment"]["SER_JOBS_DIR"] == "/jobs"
    assert mounts["/jobs"].source == "jobs" and not mounts["/jobs"].read_only
    assert api["restart"] == "on-failure:5"
    health = api["healthcheck"]
    assert duration_seconds(health["start_period"]) >= 120, "the model load needs minutes on a cold cache"
    assert duration_seconds(health["timeout"]) >= 5
    assert duration_seconds(health["interval"]) >= 10
    assert health["retries"] >= 3
    assert "command" not in api, "api runs the image's CMD (docker/start.sh)"


def test_gpu_overlay_reserves_an_nvidia_gpu_and_builds_the_cuda_wheel() -> None:
    merged = interpolate_defaults(merge_compose(load_yaml(BASE_COMPOSE), load_yaml(GPU_COMPOSE)))
    for name in ("api", "train"):
        service = merged["services"][name]
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
        assert service["build"]["args"]["TORCH_INDEX"] == "", "the CUDA torch wheel comes from PyPI"
        assert service["build"]["args"]["BASE"]
        assert service["build"]["context"] == "." and service["build"]["dockerfile"] == "docker/Dockerfile"
        assert service["image"].endswith(":gpu"), "the GPU image must not overwrite the CPU tag"
    assert merged["services"]["api"]["environment"]["SER_DEVICE"] == "cuda"
    assert merged["services"]["api"]["environment"]["SER_ARTIFACTS"] == "/artifacts", "the base's env is kept"


def test_train_service_is_a_one_shot_job_in_its_own_profile() -> None:
    train = interpolate_defaults(load_yaml(BASE_COMPOSE)["services"]["train"])
    assert train["profiles"] == ["train"]
    assert train["restart"] == "no"
    assert train["healthcheck"] == {"disable": True}
    mounts = {m.target: m for m in parse_mounts(train)}
    assert mounts["/artifacts"].source == "artifacts" and not mounts["/artifacts"].read_only
    assert mounts["/cache/huggingface"].source == "hf-cache"
    assert mounts["/data"].source == "./data"


def test_train_command_parses_with_the_training_cli() -> None:
    try:
        cli = importlib.import_module("training.cli")
    except ModuleNotFoundError as exc:
        pytest.skip(f"training.cli is not importable yet: {exc}")
    if not hasattr(cli, "build_parser"):
        pytest.skip("training.cli has no build_parser() yet")
    command = interpolate_defaults(load_yaml(BASE_COMPOSE)["services"]["train"]["command"])
    assert command[:3] == ["python", "-m", "training"]
    args = cli.build_parser().parse_args(command[3:])
    assert args.command == "run"
    assert (args.corpus, args.backbone, args.model) == (["cremad"], "hubert", "facebook/hubert-large-ll60k")
    assert Path(args.out) == Path("/artifacts")
    assert Path("/data") in Path(args.data_dir[0]).parents, "the corpus must be read from the /data mount"


def test_train_command_takes_its_settings_from_the_environment() -> None:
    command = load_yaml(BASE_COMPOSE)["services"]["train"]["command"]
    text = " ".join(command)
    for variable in ("TRAIN_CORPUS", "TRAIN_BACKBONE", "TRAIN_MODEL"):
        assert f"${{{variable}:-" in text, f"{variable} with a default"


@pytest.mark.skipif(
    not (shutil.which("docker-compose") or shutil.which("docker")), reason="no compose command line installed"
)
def test_compose_cli_accepts_the_files() -> None:
    commands = []
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        commands.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        commands.append(["docker-compose"])
    if not commands:
        pytest.skip("docker has no compose plugin and docker-compose is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SER_", "TRAIN_", "COMPOSE_"))}
    for base in commands:
        for files in (["-f", BASE_COMPOSE.name], ["-f", BASE_COMPOSE.name, "-f", GPU_COMPOSE.name]):
            run = subprocess.run(
                [*base, *files, "--profile", "train", "config", "-q"],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert run.returncode == 0, f"{' '.join(base + files)} config: {run.stderr}"
