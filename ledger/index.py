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
from uuid import UUID

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


class TransferIndex(MutableMapping[UUID, V], Generic[V]):
    """A ``GenerationalIndex`` keyed by transfer id, stored under the id's integer.

    A lookup that misses hashes its key once per generation, and ``UUID.__hash__`` is Python code: with the index
    at its bound (nine generations), a miss took 1.12 µs against 0.10 µs with one, and every new transfer misses
    several times. An ``int`` hashes in C."""

    def __init__(self, bound: int) -> None:
        self._index: GenerationalIndex[int, V] = GenerationalIndex(bound)

    def get(self, key: UUID, default: V | None = None) -> V | None:  # type: ignore[override]
        return self._index.get(key.int, default)

    def __getitem__(self, key: UUID) -> V:
        value = self._index.get(key.int)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, UUID) and key.int in self._index

    def add(self, key: UUID, value: V) -> None:
        self._index.add(key.int, value)

    def __setitem__(self, key: UUID, value: V) -> None:
        self._index[key.int] = value

    def __delitem__(self, key: UUID) -> None:
        try:
            del self._index[key.int]
        except KeyError:
            raise KeyError(key) from None

    def __iter__(self) -> Iterator[UUID]:
        for value in self._index:
            yield UUID(int=value)

    def __len__(self) -> int:
        return len(self._index)

    def trim(self, bound: int) -> bool:
        return self._index.trim(bound)


#: Bits per id and probes per id of each ``IdFilter`` segment: about 7 in 100,000 ids never added are reported
#: as possibly added when a segment holds its capacity, so a batch of 64 new transfers is sent to the store
#: about once in 200 batches.
FILTER_BITS_PER_ID = 24
FILTER_PROBES = 7
#: The first segment's capacity; each later one holds twice the one before.
FILTER_FIRST_CAPACITY = 1 << 20


class IdFilter:
    """The ids a ledger has committed, as a Bloom filter: ``value in f`` is False only for an id never added.

    The writer adds every transfer id it commits or replays, and, when it starts from a checkpoint, every one
    committed before it. A transfer id its index does not hold is then looked up in the store only when the
    filter says it may have been committed: that is only a key really used before (a retry of an old request),
    or a rare false positive, instead of every new transfer of every batch.

    Ids are 128-bit integers from uniform hashes (``uuid5``) or random bits (``uuid4``), so the two halves serve
    as the two hashes of double hashing directly. It grows by adding segments, each twice as large as the one
    before, so adding never rebuilds anything; a lookup probes each segment and usually stops at its first
    or second bit.
    """

    __slots__ = ("_filled", "_segments", "count")

    def __init__(self, first_capacity: int = FILTER_FIRST_CAPACITY) -> None:
        assert first_capacity >= 1
        self._segments: list[tuple[bytearray, int, int]] = []  # (bits, mask, capacity)
        self.count = 0
        self._grow(first_capacity)

    def _grow(self, capacity: int) -> None:
        bits = 1 << max(6, (capacity * FILTER_BITS_PER_ID - 1).bit_length())  # a power of two, for the mask
        self._segments.append((bytearray(bits // 8), bits - 1, capacity))
        self._filled = 0

    def add(self, value: int) -> None:
        bits, mask, capacity = self._segments[-1]
        # Probe i is at (h1 + i * h2) mod the segment's size, a power of two: both hashes are reduced by the mask
        # first, so the arithmetic stays on small integers (a fifth cheaper than on 64-bit ones).
        p, h2 = value & mask, ((value >> 64) | 1) & mask
        for _ in range(FILTER_PROBES):
            bits[p >> 3] |= 1 << (p & 7)
            p = (p + h2) & mask
        self.count += 1
        self._filled += 1
        if self._filled >= capacity:
            self._grow(capacity * 2)

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, int):
            return False
        high = (value >> 64) | 1
        for bits, mask, _ in self._segments:
            p, h2 = value & mask, high & mask
            for _ in range(FILTER_PROBES):
                if not bits[p >> 3] & (1 << (p & 7)):
                    break
                p = (p + h2) & mask
            else:
                return True
        return False

    @property
    def nbytes(self) -> int:
        return sum(len(bits) for bits, _, _ in self._segments)
