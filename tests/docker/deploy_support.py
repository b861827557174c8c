"""Helpers for the deployment checks: the compose files (merged, interpolated, validated against the
vendored Compose Specification schema in ``data/``), the Dockerfile and ``.dockerignore`` parsed as Docker
reads them, and the paths every part names."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import yaml

REPO = Path(__file__).resolve().parents[2]
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
