"""The allocator setting: glibc's mmap threshold is set where the C library is glibc."""

from __future__ import annotations

import platform

import pytest

from service.allocator import set_mmap_threshold


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is a glibc function")
def test_the_mmap_threshold_is_set_on_glibc():
    assert set_mmap_threshold(1 << 20)
    assert not set_mmap_threshold(0)  # 0 leaves glibc's adaptive default alone
