from __future__ import annotations

import numpy as np
import pytest
from support import synthetic_clip


@pytest.fixture(scope="session")
def waves() -> list[np.ndarray]:
    """Four generated clips of different lengths (0.6-2.3 s), for the backbone tests."""
    return [
        synthetic_clip(label, seconds, seed=i)
        for i, (label, seconds) in enumerate([("happy", 1.0), ("sad", 1.7), ("angry", 0.6), ("fear", 2.3)])
    ]
