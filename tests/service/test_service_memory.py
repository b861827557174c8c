"""The malloc setting keeps freed memory for the next batch instead of faulting it back in."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, threading
    import numpy as np
    from service.memory import keep_freed_memory

    enabled = keep_freed_memory() if sys.argv[1] == "keep" else False
    faults = []

    def batches():
        # What a forward pass does: allocate, fill and free blocks of a few MB to 16 MB, again and again.
        for _ in range(12):
            before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
            blocks = [np.ones(n, dtype=np.float32) for n in (4_000_000, 2_000_000, 1_000_000, 4_000_000)]
            del blocks
            faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)

    thread = threading.Thread(target=batches)  # the service's inference runs on its own thread
    thread.start()
    thread.join()
    print(json.dumps({"enabled": enabled, "faults": faults}))
    """
)


def run(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only"
)
def test_freed_blocks_are_reused_without_page_faults():
    kept, default = run("keep"), run("default")
    assert kept["enabled"] is True and default["enabled"] is False
    # 44 MB a round. glibc's defaults give it back and fault it in again every round (thousands of
    # faults); kept, it is reused: only the first round touches fresh pages.
    assert kept["faults"][0] > 1_000
    assert max(kept["faults"][1:]) < 50, kept["faults"]
    assert min(default["faults"][1:]) > 1_000, default["faults"]


def test_the_setting_is_on_by_default_and_can_be_turned_off(monkeypatch):
    from service.settings import ServiceSettings

    assert ServiceSettings().keep_freed_memory is True
    monkeypatch.setenv("SER_KEEP_FREED_MEMORY", "false")
    assert ServiceSettings().keep_freed_memory is False
