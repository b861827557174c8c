"""Machine facts: the CPUs a process may use, torch's threads, and what ``dtype="auto"`` resolves to."""

from __future__ import annotations

import torch

from shared.backbones import runtime
from shared.backbones.runtime import available_cpus, configure_torch_threads, resolve_dtype


def test_threads_are_capped_at_the_cpus_available_unless_set():
    before = torch.get_num_threads()
    try:
        assert 1 <= available_cpus() <= (len(__import__("os").sched_getaffinity(0)))
        assert configure_torch_threads(1) == 1 and torch.get_num_threads() == 1
        assert configure_torch_threads(None) == 1  # an explicit setting stands
        torch.set_num_threads(available_cpus() + 3)
        assert configure_torch_threads(None) == available_cpus() == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_auto_dtype_is_bf16_where_the_cpu_has_bf16_units(monkeypatch):
    cpu = torch.device("cpu")
    for fast in (True, False):
        monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda fast=fast: fast)
        assert resolve_dtype("auto", cpu) == ("bf16" if fast else "fp32")
        assert resolve_dtype("bf16", cpu) == "bf16" and resolve_dtype("fp32", cpu) == "fp32"  # explicit wins
