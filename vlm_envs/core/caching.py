"""Caches bounded in bytes, so a long-running process (an env server) never outgrows a stated budget.

``functools.lru_cache`` bounds the number of entries, not their size: a cache of frames keyed by
image size, or of solver results keyed by target, grows with every new size or target a client
asks for. A :class:`ByteLRU` evicts its least recently used entries once the bytes of its entries
pass ``max_bytes``. Every instance registers under a name, so :func:`cache_bytes` reports what
the process holds (tests and benchmarks check it against the budgets).
"""

from __future__ import annotations

import functools
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from fractions import Fraction
from typing import Any

import numpy as np

_CACHES: dict[str, ByteLRU] = {}
_MISSING = object()


def deep_sizeof(obj: Any) -> int:
    """Bytes held by ``obj`` and what it contains (tuples, lists, sets, dicts, fractions, arrays).

    Shared objects are counted once per reference, so the result is an upper bound.
    """
    size = sys.getsizeof(obj)
    if isinstance(obj, np.ndarray):
        return size + (obj.nbytes if obj.base is not None else 0)  # getsizeof counts an owned buffer already
    if isinstance(obj, (tuple, list, set, frozenset)):
        return size + sum(deep_sizeof(item) for item in obj)
    if isinstance(obj, dict):
        return size + sum(deep_sizeof(key) + deep_sizeof(value) for key, value in obj.items())
    if isinstance(obj, Fraction):
        return size + sys.getsizeof(obj.numerator) + sys.getsizeof(obj.denominator)
    return size


def _entry_bytes(key: Any, value: Any) -> int:
    return deep_sizeof(key) + deep_sizeof(value)


class ByteLRU:
    """A thread-safe least-recently-used map whose entries together hold at most ``max_bytes``.

    ``entry_bytes(key, value)`` sizes an entry (default: :func:`deep_sizeof` of both); an entry
    larger than the whole budget is not kept. A named cache is listed by :func:`cache_bytes`; an
    unnamed one is part of something else that accounts for it (a cached value holding a cache).
    """

    def __init__(self, name: str | None, max_bytes: int, entry_bytes: Callable[[Any, Any], int] = _entry_bytes):
        self.name = name
        self.max_bytes = int(max_bytes)
        self._entry_bytes = entry_bytes
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0
        if name is not None:
            _CACHES[name] = self  # a module reloaded replaces its caches

    def get(self, key: Hashable, default: Any = None) -> Any:
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return default
            self._entries.move_to_end(key)
            return found[0]

    def __contains__(self, key: Hashable) -> bool:
        return self.get(key, _MISSING) is not _MISSING

    def put(self, key: Hashable, value: Any) -> None:
        size = self._entry_bytes(key, value)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.nbytes -= old[1]
            self._entries[key] = (value, size)
            self.nbytes += size
            while self.nbytes > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self.nbytes -= evicted

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.nbytes = 0


def byte_lru_cache(name: str, max_bytes: int, entry_bytes: Callable[[Any, Any], int] = _entry_bytes):
    """``functools.lru_cache`` bounded in bytes (positional arguments only); the cache is ``fn.cache``."""

    def decorate(fn: Callable) -> Callable:
        cache = ByteLRU(name, max_bytes, entry_bytes)

        @functools.wraps(fn)
        def cached(*args):
            found = cache.get(args, _MISSING)
            if found is _MISSING:
                found = fn(*args)
                cache.put(args, found)
            return found

        cached.cache = cache
        return cached

    return decorate


def cache_bytes() -> dict[str, int]:
    """The bytes each named cache holds now."""
    return {name: cache.nbytes for name, cache in _CACHES.items()}


def cache_budgets() -> dict[str, int]:
    """The most bytes each named cache may hold."""
    return {name: cache.max_bytes for name, cache in _CACHES.items()}
