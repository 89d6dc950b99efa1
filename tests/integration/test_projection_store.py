"""The read models on real Postgres, fed straight from ledger histories (no Kafka): exactly-once application,
gaps, poison, rebuild as of a position or a time, and verification.

The property test is the issue's: for random event histories, rebuilding as of position p equals the live model
stopped at p, even when the live model received its events in random batches with redeliveries.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from readside_support import SteppingClock, random_ledger_history

from ledger.application import LedgerApplication
from ledger.contracts import IntegrationEvent, TransferCommittedV1
from projections.rebuild import iter_events, rebuild, table_checksums, verify
from projections.schema import create_schema
from projections.store import BatchRejected, ProjectionStore


def ledger_history(ops: list[tuple[int, int, int, int]]) -> LedgerApplication:
    """Runs random commands on an in-memory ledger; refused ones (insufficient funds, ...) are just refused."""
    app: LedgerApplication = random_ledger_history(
        ops, clock=SteppingClock(datetime(2026, 11, 29, 12, 0, tzinfo=UTC)), hold_timeout_mod=2)
    return app


operations = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 50), st.integers(0, 50), st.integers(0, 40)),
                      min_size=1, max_size=40)


@pytest.fixture(scope="module")
def read_dsn(settings, tmp_path_factory) -> Iterator[str]:
    from infra.settings import drop_database, ensure_database, with_database

    dsn = with_database(settings.pg_dsn, f"razao_test_read_{uuid.uuid4().hex[:8]}")
    ensure_database(dsn)
    yield dsn
    drop_database(dsn)


def fresh_live(dsn: str, schema: str) -> ProjectionStore:
    with psycopg.connect(dsn) as conn:
        create_schema(conn, schema, replace=True)
    store = ProjectionStore(dsn, schema)
    store.ensure()
    return store


def feed(store: ProjectionStore, events: list[IntegrationEvent], rng: random.Random) -> None:
    """Applies ``events`` in random batches, each sometimes re-sent with some of the batch before it."""
    i = 0
    while i < len(events):
        size = rng.randint(1, 7)
        start = max(0, i - rng.randint(0, 4))  # redeliver a few already applied ones
        outcome = store.apply(events[start:i + size])
        assert outcome.gap is None and outcome.poison is None, outcome
        if rng.random() < 0.3:
            assert store.apply(events[start:i + size]).applied == 0  # the same batch again: a no-op
        i += size


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(ops=operations, cut=st.floats(0, 1), by_time=st.booleans(), rng=st.randoms(use_true_random=False))
def test_rebuild_as_of_p_equals_the_live_model_stopped_at_p(read_dsn: str, ops, cut: float, by_time: bool,
                                                            rng: random.Random) -> None:
    app = ledger_history(ops)
    events = list(iter_events(app.recorder))
    stop = events[min(len(events) - 1, int(cut * len(events)))]
    if by_time:
        # As of a time: every event recorded at or before it (the clock ticks between commands, so this cuts at
        # a command boundary, which may be after `stop` when later events share its timestamp).
        upto, until = None, stop.recorded_at
        live_events = [e for e in events if e.recorded_at <= until]
    else:
        upto, until = stop.position, None
        live_events = [e for e in events if e.position <= upto]
    store = fresh_live(read_dsn, "prop_live")
    try:
        feed(store, live_events, rng)
    finally:
        store.close()
    result = rebuild(read_dsn, app.recorder, "prop_rebuild", upto=upto, until=until)
    assert result.position == live_events[-1].position
    with psycopg.connect(read_dsn) as conn:
        assert table_checksums(conn, "prop_rebuild") == table_checksums(conn, "prop_live")
        live_pos = conn.execute("SELECT position, chain_hash FROM prop_live.tracking").fetchone()
        rebuilt_pos = conn.execute("SELECT position, chain_hash FROM prop_rebuild.tracking").fetchone()
        assert live_pos == rebuilt_pos
        # The model balances: Σ debits = Σ credits, posted and pending.
        sums = conn.execute("SELECT sum(debits_posted) - sum(credits_posted), sum(debits_pending) - "
                            "sum(credits_pending) FROM prop_live.balances").fetchone()
        assert sums == (0, 0)


@pytest.fixture(scope="module")
def sample() -> tuple[LedgerApplication, list[IntegrationEvent]]:
    app = ledger_history([(0, 1, 0, 30), (0, 2, 0, 20), (2, 1, 2, 9), (3, 1, 0, 5), (4, 0, 1, 1), (2, 2, 1, 3),
                          (3, 2, 1, 4), (4, 0, 0, 0), (1, 0, 0, 0), (2, 1, 3, 7)])
    return app, list(iter_events(app.recorder))


def test_a_missing_event_stops_application_at_the_gap(read_dsn: str, sample) -> None:
    _, events = sample
    store = fresh_live(read_dsn, "gap_live")
    try:
        assert store.apply(events[:3]).applied == 3
        outcome = store.apply(events[4:])  # events[3] was lost
        assert outcome.applied == 0 and outcome.gap == events[4]
        assert store.tracking().position == events[2].position
        outcome = store.apply(events)  # the relay publishes again from the start: the gap closes
        assert (outcome.applied, outcome.duplicates, outcome.gap) == (len(events) - 3, 3, None)
    finally:
        store.close()


def test_an_event_the_database_refuses_is_poison_and_nothing_of_its_batch_commits(read_dsn: str, sample) -> None:
    _, events = sample
    store = fresh_live(read_dsn, "poison_live")
    try:
        transfer = next(i for i, e in enumerate(events) if isinstance(e.payload, TransferCommittedV1))
        store.apply(events[:transfer])
        bad = events[transfer]
        assert isinstance(bad.payload, TransferCommittedV1)
        # A transfer naming an account that was never opened: the foreign key refuses it at commit.
        stranger = str(uuid.uuid4())
        forged = replace(bad, payload=replace(bad.payload, credit_account_id=stranger,
                                              balances=(bad.payload.balances[0],
                                                        replace(bad.payload.balances[1], account_id=stranger))))
        with pytest.raises(BatchRejected):
            store.apply([forged, *events[transfer + 1:]])
        assert store.tracking().position == events[transfer - 1].position
        outcome = store.apply([replace(bad, payload=replace(bad.payload, kind="mystery"))])
        assert outcome.poison is not None and outcome.applied == 0
    finally:
        store.close()


def test_verify_finds_a_tampered_row_and_catches_the_rebuild_up(read_dsn: str, sample) -> None:
    app, events = sample
    store = fresh_live(read_dsn, "live")
    try:
        store.apply(events)
    finally:
        store.close()
    rebuild(read_dsn, app.recorder, "audit", upto=events[len(events) // 2].position)
    result = verify(read_dsn, app.recorder, "audit")  # brings `audit` forward to the live position first
    assert result.equal and result.position == events[-1].position
    with psycopg.connect(read_dsn) as conn:
        conn.execute("UPDATE live.balances SET credits_posted = credits_posted + 1 WHERE account_id = "
                     "(SELECT account_id FROM live.balances WHERE credits_posted > 0 LIMIT 1)")
    result = verify(read_dsn, app.recorder, "audit")
    differing = [t for t in result.tables if not t.equal]
    assert [t.table for t in differing] == ["balances"]
    assert len(differing[0].only_live) == 1 and len(differing[0].only_rebuilt) == 1
    with pytest.raises(ValueError, match="does not exist"):
        verify(read_dsn, app.recorder, "nowhere")


