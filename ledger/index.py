"""The idempotency index's table: recent transfers by id, kept in generations of bounded size.

One hash table of a million entries rebuilds itself all at once whenever it grows past a power of two, and, once
full and trimmed from the front, whenever deletions have used up its free slots. Measured here: inserting into an
``OrderedDict`` took 82 ms at its 699,050th entry (a plain ``dict``, 34 ms), and the writer's batch stood still
meanwhile (decide steps of 76 to 165 ms in `razao bench ledger`; docs/benchmarks.md).

Here inserts go to the newest generation, a small ``dict``; when it holds ``generation_entries`` it is sealed
and a new one starts. Forgetting the oldest transfers drops whole generations, so no table is ever rebuilt with
more than one generation in it. A lookup tries the generations newest first (at most
``GENERATIONS_MAX + 1``, and a hit is usually in the newest).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, MutableMapping
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

#: A bound of N entries is kept in about this many generations of N / GENERATIONS_MAX entries each.
GENERATIONS_MAX = 8


class GenerationalIndex(MutableMapping[K, V], Generic[K, V]):
    """A mapping of non-None values whose oldest entries are forgotten in whole generations by ``trim``."""

    def __init__(self, bound: int) -> None:
        assert bound >= 1
        self._generations: deque[dict[K, V]] = deque([{}])
        self._size = 0
        self._generation_entries = max(1, bound // GENERATIONS_MAX)

    # ---- the mapping ------------------------------------------------------------------------------------------
    def get(self, key: K, default: V | None = None) -> V | None:  # type: ignore[override]
        for generation in reversed(self._generations):
            value = generation.get(key)
            if value is not None:
                return value
        return default

    def __getitem__(self, key: K) -> V:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        for generation in self._generations:
            if key in generation:
                return True
        return False

    def add(self, key: K, value: V) -> None:
        """Inserts a key that is not in the index (the writer's path: a new transfer, or one recalled from the
        store because the index did not have it), without looking for it first."""
        newest = self._generations[-1]
        newest[key] = value
        self._size += 1
        if len(newest) >= self._generation_entries:
            self._generations.append({})

    def __setitem__(self, key: K, value: V) -> None:
        assert value is not None, "the index holds no None values"  # ``get`` uses None for "absent"
        for generation in self._generations:
            if key in generation:
                generation[key] = value
                return
        self.add(key, value)

    def __delitem__(self, key: K) -> None:
        for generation in self._generations:
            if key in generation:
                del generation[key]
                self._size -= 1
                return
        raise KeyError(key)

    def __iter__(self) -> Iterator[K]:
        for generation in list(self._generations):
            yield from list(generation)

    def __len__(self) -> int:
        return self._size

    # ---- forgetting -------------------------------------------------------------------------------------------
    def trim(self, bound: int) -> bool:
        """Forgets the oldest entries until at most ``bound`` remain; True if anything was forgotten.

        Whole generations go first, while at least ``bound`` minus one generation is left. Below that (a bound
        smaller than the generations already made, as after lowering it), entries go one by one, oldest first.
        """
        assert bound >= 1
        self._generation_entries = max(1, bound // GENERATIONS_MAX)
        forgot = False
        while self._size > bound:
            oldest = self._generations[0]
            if not oldest and len(self._generations) > 1:
                self._generations.popleft()
                continue
            if len(self._generations) > 1 and self._size - len(oldest) >= bound - self._generation_entries:
                self._generations.popleft()
                self._size -= len(oldest)
            else:
                del oldest[next(iter(oldest))]
                self._size -= 1
            forgot = True
        return forgot
