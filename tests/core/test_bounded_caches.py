"""Every cache a client can grow (frames, card art, the solver's) is bounded in bytes."""

from __future__ import annotations

import gc
import itertools
import os
import sys
import tracemalloc

import numpy as np
import pytest

from vlm_envs.core.caching import ByteLRU, byte_lru_cache, cache_budgets, cache_bytes
from vlm_envs.cards import BlackjackEnv, EZPointsEnv, NumberLineEnv, Points24Env
from vlm_envs.cards import formula, number_line

MiB = 2**20
# What the process's caches may hold in all: the sum of their budgets (vlm_envs.core.caching.cache_budgets).
TOTAL_BUDGET = 160 * MiB
# How much the process may grow while 1,000 sizes and targets go through it (~35 MiB measured);
# before the caches were bounded, 1,000 NumberLine sizes up to 1,024 px alone added ~880 MiB.
RSS_GROWTH_BOUND = 128 * MiB


def test_byte_lru_evicts_the_least_recently_used_by_bytes():
    cache = ByteLRU(None, 100, lambda key, value: value)
    cache.put("a", 40)
    cache.put("b", 40)
    assert cache.get("a") == 40  # "b" is now the least recently used
    cache.put("c", 40)
    assert "b" not in cache and "a" in cache and "c" in cache and cache.nbytes == 80
    cache.put("huge", 101)  # larger than the whole budget: never kept
    assert "huge" not in cache and len(cache) == 2
    cache.put("a", 10)  # replacing an entry replaces its bytes
    assert cache.nbytes == 50


def test_byte_lru_cache_caches_none_and_counts_in_bytes():
    calls = []

    @byte_lru_cache("test.frames", 3 * 1000)
    def frame(n: int):
        calls.append(n)
        return None if n < 0 else np.zeros(1000 - 200, dtype=np.uint8)

    frame(-1), frame(-1)
    assert calls == [-1]  # a cached None is a hit, not a miss
    for n in range(10):
        frame(n)
    assert frame.cache.nbytes <= 3000 and len(frame.cache) == 3
    assert cache_bytes()["test.frames"] == frame.cache.nbytes


def test_pieces_estimate_bounds_the_memory_an_entry_holds():
    """The solver's largest entries are sized by an estimate (sizing every object would cost more
    than building them); it must not undercount what the entry really keeps alive."""
    hand = (3, 7, 8, 9)
    for sub in (h for n in (1, 2, 3) for h in itertools.combinations(hand, n)):
        formula._pieces(tuple(sorted(sub)), "+-*/", True)  # the smaller entries exist already
    formula._pieces.cache.clear()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    tables = formula._pieces(hand, "+-*/", True)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(tables[0]) > 100
    assert formula._pieces_bytes((hand, "+-*/", True), tables) >= held


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_caches_stay_within_budget_for_1000_sizes_and_targets():
    """NumberLine cached a frame per image size (~48 GiB worst case) and the solver a result per
    target, without bound; now 1,000 distinct sizes and 1,000 distinct targets (a tenth with
    oracle labels) leave every cache within its byte budget and the process within a bound."""
    assert sum(cache_budgets().values()) <= TOTAL_BUDGET
    number_line._layout.cache.clear()  # other tests in this process may have drawn other NumberLine states
    gc.collect()
    rss_before = _rss()
    rng = np.random.default_rng(0)
    sizes = sorted({(int(h), int(w)) for h, w in rng.integers(16, 257, size=(1100, 2))})[:1000]
    assert len(sizes) == 1000
    for i, size in enumerate(sizes):
        NumberLineEnv(image_size=size).reset(seed=i)
        if i % 5 == 0:
            BlackjackEnv(image_size=size).reset(seed=i)
    targets = sorted(Points24Env.reachable_targets())
    for i, target in enumerate(targets[::len(targets) // 1000][:1000]):
        env = Points24Env(target_points=target, oracle_labels=i % 10 == 0, image_size=(64, 64))
        env.reset(seed=i)
        env.step(0)
    for target in sorted(EZPointsEnv.reachable_targets()):
        env = EZPointsEnv(target_points=target, oracle_labels=True, image_size=(64, 64))
        env.reset(seed=target)
        env.step(0)
    held, budgets = cache_bytes(), cache_budgets()
    assert all(held[name] <= budgets[name] for name in held), held
    layouts = number_line._layout.cache
    assert len(layouts) <= 36 and layouts.nbytes >= len(layouts) * 300 * 300 * 3  # a frame per state, not per size
    gc.collect()
    print(f"RSS grew {(_rss() - rss_before) / MiB:.0f} MiB; caches hold {sum(held.values()) / MiB:.0f} MiB")
    assert _rss() - rss_before < RSS_GROWTH_BOUND


@pytest.mark.filterwarnings("ignore:ALFWorld split")
def test_alfworld_layouts_stay_within_budget_at_large_sizes():
    """The schematic kept 16 room layouts whatever their size (16 at 2048x2048: ~200 MiB before
    their tiles); now large ones push older ones out."""
    pytest.importorskip("alfworld")
    from vlm_envs.alfworld_wrap.env import ALFWorldEnv
    from vlm_envs.alfworld_wrap.schematic import _layout

    for side in (2048, 2000, 1900, 1800):
        env = ALFWorldEnv(image_size=(side, side))
        env.reset(seed=0)
        env.step("look")
    assert _layout.cache.nbytes <= _layout.cache.max_bytes and len(_layout.cache) <= 2
