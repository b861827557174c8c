"""The dependency direction is service -> shared <- training (benchmarks may use all three), with no
exemptions, and nothing heavy happens at import time."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: package -> packages it must never import.
FORBIDDEN = {
    "shared": {"service", "training", "benchmarks"},
    "service": {"training", "benchmarks"},
    "training": {"service", "benchmarks"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependency_direction(package):
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        bad = imported_packages(path) & FORBIDDEN[package]
        if bad:
            offenders.append(f"{rel} imports {', '.join(sorted(bad))}")
    assert not offenders, "\n".join(offenders)


def test_importing_the_service_loads_no_model():
    code = (
        "import sys; import service.app, shared.predictor, shared.audio; "
        "print('transformers' in sys.modules and any(m.startswith('transformers.models.hubert') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
