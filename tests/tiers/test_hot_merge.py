"""Late readings merged into the hot ring by the compiled kernel (tiers.hotkernel.merge_rows)
leave the ring exactly as the numpy way does: the same rows, duplicates, covered times."""

import random

import numpy as np
import pytest

from tiers import hot
from tiers.hot import HotRing

BASE = 1_764_000_000_000


@pytest.fixture(scope="module")
def compiled():
    saved = hot._compiled, hot._prefault
    hot.use_compiled_writes()
    loaded = hot._compiled
    hot._compiled, hot._prefault = saved
    return loaded


def _batches(rng: random.Random, keys: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Batches of readings, mostly in order, some late (older than the sensor's newest), some
    repeating a stored reading, some repeated within the batch."""
    out, clock = [], 0
    for _ in range(60):
        n = rng.randint(1, 60)
        clock += rng.randint(1, 400)
        key_ids = np.array([rng.randrange(keys) for _ in range(n)], dtype=np.int32)
        late = rng.random() < 0.4
        ts = np.array([BASE + (clock - rng.randint(0, 3000) if late else clock + rng.randint(0, 50)) // 5 * 5
                       for _ in range(n)], dtype=np.int64)
        out.append((key_ids, ts, np.array([rng.random() for _ in range(n)])))
    return out


def _state(ring: HotRing, keys: int) -> list:
    rows = [tuple(a.tolist() for a in ring.series(key)) for key in range(keys)]
    return [rows, ring._covered[:keys].tolist(), ring._last[:keys].tolist(), ring._written[:keys].tolist(),
            ring._seq[:keys].tolist(), ring.capacity]


@pytest.mark.parametrize("budget, window_ms", [(1 << 30, 60_000), (48 * 1024, 10**9), (48 * 1024, 2_000)],
                         ids=["roomy", "budget-bound", "short-window"])
def test_the_compiled_merge_leaves_the_ring_as_the_numpy_merge(monkeypatch, compiled, budget, window_ms):
    for seed in range(25):
        rng = random.Random(seed)
        keys = rng.randint(1, 24)
        batches = _batches(rng, keys)
        rings, masks = [], []
        for kernels in (compiled, None):
            monkeypatch.setattr(hot, "_compiled", kernels)
            ring = HotRing(window_ms=window_ms, memory_budget=budget, covered_from=BASE - 10**7)
            masks.append([tuple(m.tolist() for m in ring.insert(*batch)) for batch in batches])
            rings.append(_state(ring, keys))
        assert masks[0] == masks[1], seed
        assert rings[0] == rings[1], seed
        assert any(not all(keep) for keep, _ in masks[0])  # duplicates were found, not only stored
