"""The Dockerfile: CPU by default, a non-root runtime stage, every file it copies present and in the build
context, nothing private in the context."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
from pathlib import PurePosixPath

from deploy_support import (
    BASE_COMPOSE,
    CPU_TORCH_INDEX,
    DOCKER,
    DOCKERFILE,
    REPO,
    SERVICE_UID,
    command_words,
    dockerfile_copies,
    excluded_from_context,
    exec_form,
    load_yaml,
    parse_dockerfile,
    repo_path_in_image,
    script_words,
)

# --- the Dockerfile ----------------------------------------------------------------------------------


def test_dockerfile_build_arguments_default_to_the_cpu_image() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG BASE=python:3\.11-slim$", text, re.M)
    assert re.search(rf"^ARG TORCH_INDEX={re.escape(CPU_TORCH_INDEX)}$", text, re.M)
    froms = [i for i in parse_dockerfile() if i.keyword == "FROM"]
    assert len(froms) == 2 and all(f.args.startswith("${BASE} AS ") for f in froms)


def test_runtime_stage_is_non_root_with_volumes_healthcheck_and_start_script() -> None:
    instructions = [i for i in parse_dockerfile() if i.stage == 1]
    by_keyword: dict[str, list[str]] = {}
    for ins in instructions:
        by_keyword.setdefault(ins.keyword, []).append(ins.args)
    assert by_keyword["USER"] == [f"{SERVICE_UID}:{SERVICE_UID}"]
    assert any(f"--uid {SERVICE_UID}" in run for run in by_keyword["RUN"])
    env = " ".join(by_keyword["ENV"])
    for setting in (
        "HF_HOME=/cache/huggingface",
        "SER_ARTIFACTS=/artifacts",
        "SER_JOBS_DIR=/jobs",
        "SER_HOST=0.0.0.0",
        "SER_PORT=8000",
    ):
        assert setting in env
    assert "PATH=/opt/venv/bin:$PATH" in env
    assert set(json.loads(by_keyword["VOLUME"][0])) == {"/cache/huggingface", "/artifacts", "/jobs"}
    assert by_keyword["EXPOSE"] == ["8000"]
    assert exec_form(by_keyword["CMD"][0]) == ["/app/docker/start.sh"]
    assert "--start-period=" in by_keyword["HEALTHCHECK"][0]
    venv_copies = [c for c in dockerfile_copies(instructions) if c.sources == ["/opt/venv"]]
    assert venv_copies and venv_copies[0].flags.get("from") == "builder"


def test_every_file_the_dockerfile_copies_exists_and_is_in_the_build_context() -> None:
    copies = [c for c in dockerfile_copies(parse_dockerfile()) if "from" not in c.flags]
    assert copies
    for cp in copies:
        for src in cp.sources:
            assert (REPO / src).exists(), f"COPY {src}: missing"
            if src != ".":
                assert not excluded_from_context(src), f"COPY {src}: .dockerignore leaves it out"


def test_build_context_holds_the_project_and_nothing_private() -> None:
    for kept in (
        "pyproject.toml",
        "shared/bundle.py",
        "service/settings.py",
        "training/cli.py",
        "docker/install.sh",
    ):
        assert not excluded_from_context(kept), kept
    for dropped in (
        ".venv/bin/python",
        ".git/HEAD",
        "artifacts/x/1/manifest.json",
        "data/CREMA-D/a.wav",
        "tests/docker/test_dockerfile.py",
        "shared/__pycache__/bundle.cpython-311.pyc",
        ".env",
    ):
        assert excluded_from_context(dropped), dropped


def test_every_script_the_dockerfile_runs_exists_and_is_executable() -> None:
    instructions = parse_dockerfile()
    copies = dockerfile_copies(instructions)
    seen = []
    for ins in instructions:
        if ins.keyword not in ("RUN", "CMD", "ENTRYPOINT", "HEALTHCHECK"):
            continue
        words = command_words(ins)
        for word in script_words(words):
            container_path = word if word.startswith("/") else str(PurePosixPath(ins.workdir) / word)
            repo_file = repo_path_in_image(container_path, ins.stage, copies)
            assert repo_file is not None, f"line {ins.line}: {word} was not copied from the repository"
            assert repo_file.is_file(), f"line {ins.line}: {repo_file} does not exist"
            if repo_file.suffix == ".sh" or words[0] == word:
                assert os.access(repo_file, os.X_OK), f"{repo_file} is not executable"
                assert repo_file.read_text().startswith("#!"), f"{repo_file} has no shebang"
            seen.append(repo_file.relative_to(REPO).as_posix())
    assert {"docker/install.sh", "docker/system-deps.sh", "docker/start.sh", "docker/healthcheck.py"} <= set(
        seen
    )


def test_healthchecks_run_the_healthcheck_script_in_the_image() -> None:
    instructions = parse_dockerfile()
    copies = dockerfile_copies(instructions)
    runtime = max(i.stage for i in instructions)
    (docker_health,) = [i for i in instructions if i.keyword == "HEALTHCHECK"]
    compose_test = load_yaml(BASE_COMPOSE)["services"]["api"]["healthcheck"]["test"]
    assert compose_test[0] == "CMD"
    for words in (command_words(docker_health), compose_test[1:]):
        assert words[0] == "python", "the venv's python (on PATH) runs it; the image has no curl"
        assert repo_path_in_image(words[1], runtime, copies) == DOCKER / "healthcheck.py"


def test_api_command_runs_an_importable_service_module() -> None:
    start = (DOCKER / "start.sh").read_text()
    modules = re.findall(r"^exec .*\bpython\S*\"? -m (\S+)", start, re.M)
    assert modules == ["service"]
    assert importlib.util.find_spec("service") is not None
    assert importlib.util.find_spec("service.__main__") is not None, "service/__main__.py is missing"
