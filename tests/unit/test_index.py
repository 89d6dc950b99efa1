"""The idempotency index's generational table, a mapping that forgets its oldest entries in whole generations,
and the filter of committed ids that decides which forgotten keys are worth looking up."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.index import GENERATIONS_MAX, GenerationalIndex, IdFilter, TransferIndex

_ops = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(0, 400)),
    st.tuples(st.just("set"), st.integers(0, 400)),
    st.tuples(st.just("del"), st.integers(0, 400)),
    st.tuples(st.just("trim"), st.integers(1, 120)),
), max_size=300)


@given(ops=_ops, bound=st.integers(1, 200))
def test_it_behaves_as_an_insertion_ordered_mapping_that_forgets_its_oldest(
        ops: list[tuple[str, int]], bound: int) -> None:
    index: GenerationalIndex[int, str] = GenerationalIndex(bound)
    model: dict[int, str] = {}  # insertion ordered, like the index
    for step, (op, n) in enumerate(ops):
        if op == "add" and n not in model:
            index.add(n, f"v{step}")
            model[n] = f"v{step}"
        elif op == "set":
            index[n] = f"s{step}"
            model[n] = f"s{step}"  # an existing key keeps its place
        elif op == "del" and n in model:
            del index[n]
            del model[n]
        elif op == "trim":
            before = list(model)
            forgot = index.trim(n)
            kept = list(index)
            # Only the oldest are forgotten: what is kept is the newest part of what was there, in order.
            assert kept == before[len(before) - len(kept):]
            assert forgot == (len(kept) < len(before))
            assert len(kept) <= n
            assert len(before) <= n or len(kept) >= n - max(1, n // GENERATIONS_MAX)
            model = {k: model[k] for k in kept}
        assert len(index) == len(model)
        assert list(index) == list(model)
        assert all(index.get(k) == v and k in index for k, v in model.items())
    assert all(index.get(k) is None and k not in index for k in range(401) if k not in model)


def test_no_generation_grows_past_its_share_of_the_bound() -> None:
    """The point of generations: no table holds more than bound / GENERATIONS_MAX entries, so none is rebuilt
    with a large share of the index in it."""
    bound = 8_000
    index: GenerationalIndex[int, int] = GenerationalIndex(bound)
    for n in range(50_000):
        index.add(n, n)
        if n % 100 == 0:
            index.trim(bound)
    index.trim(bound)
    sizes = [len(g) for g in index._generations]
    assert max(sizes) <= bound // GENERATIONS_MAX
    assert bound - bound // GENERATIONS_MAX <= len(index) <= bound
    assert list(index) == list(range(50_000 - len(index), 50_000))



def test_the_transfer_index_is_a_mapping_by_transfer_id() -> None:
    # Stored under the ids' integers, but read, written and listed by id; the newest of a bound of 4 are kept.
    index: TransferIndex[str] = TransferIndex(4)
    ids = [uuid.uuid4() for _ in range(6)]
    for n, transfer_id in enumerate(ids):
        index.add(transfer_id, f"t{n}")
    assert index.trim(4) and len(index) == 4 and list(index) == ids[2:]
    assert ids[1] not in index and index.get(ids[1]) is None
    assert ids[5] in index and index[ids[5]] == "t5" and index.get(ids[2]) == "t2"
    assert ids[5].int not in index  # only an id finds its entry
    index[ids[3]] = "t3'"
    del index[ids[2]]
    assert dict(index) == {ids[3]: "t3'", ids[4]: "t4", ids[5]: "t5"}
    for missing in (ids[0], ids[2]):
        with pytest.raises(KeyError):
            index[missing]
        with pytest.raises(KeyError):
            del index[missing]

# ---- the filter of committed ids --------------------------------------------------------------------------------


@given(st.sets(st.uuids(), max_size=3_000), st.integers(1, 400))
def test_every_added_id_is_reported_as_possibly_added(ids: set[uuid.UUID], first_capacity: int) -> None:
    f = IdFilter(first_capacity)  # small segments: the growth path is exercised too
    for i in ids:
        f.add(i.int)
    assert f.count == len(ids)
    assert all(i.int in f for i in ids)


def test_ids_never_added_are_rarely_reported() -> None:
    f = IdFilter(first_capacity=10_000)
    for n in range(50_000):  # five segments' worth: 10k, 20k, then part of 40k
        f.add(uuid.uuid5(uuid.NAMESPACE_URL, f"key-{n}").int)
    strangers = [uuid.uuid4().int for _ in range(50_000)]
    false_positives = sum(1 for s in strangers if s in f)
    # Designed for about 7 in 100,000 per full segment; 25 in 50,000 would mean a broken hash split.
    assert false_positives <= 25
    assert "not an id" not in f


def test_a_committed_transfer_costs_the_index_under_half_a_kilobyte() -> None:
    """The index holds up to a million recent transfers in the writer's memory. Each entry keeps what a replay and
    a conflict check need, not the event: with its chain hash, post-states and attribute dict this measure gave
    888 bytes a transfer, and 367 without."""
    import tracemalloc
    from datetime import UTC, datetime

    from ledger.chart import REQUIRED_FLAGS, AccountCode
    from ledger.model import CreateTransfer, Decider, LedgerState, OpenAccount
    from ledger.writer import LedgerWriter

    state, now = LedgerState(), datetime(2026, 11, 30, tzinfo=UTC)
    wallets = [uuid.uuid4() for _ in range(100)]
    source = uuid.uuid4()
    for account_id, code in [(source, AccountCode.PIX_SETTLEMENT)] + [(w, AccountCode.INVESTOR_WALLET)
                                                                        for w in wallets]:
        opened = Decider(state).open_account(OpenAccount(account_id, code, REQUIRED_FLAGS[code]), now)
        state.apply(opened, verify_chain=False)  # type: ignore[arg-type]
    transfers = [CreateTransfer(f"memory-{i:06d}", source, wallets[i % 100], 100) for i in range(20_000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for transfer in transfers:
            LedgerWriter._decide_single(Decider(state), transfer, now)
        per_transfer = (tracemalloc.get_traced_memory()[0] - before) / len(transfers)
    finally:
        tracemalloc.stop()
    assert len(state.transfers) == len(transfers)
    assert per_transfer < 500, f"{per_transfer:.0f} bytes per indexed transfer"
