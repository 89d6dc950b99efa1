"""The PIX webhook inbox on real Postgres: one row per endToEndId whatever the duplicates (in one transaction, across
transactions, from concurrent group commits), the raw deliveries kept, and the due/finish/retry cycle."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from commands.pix_inbox import InboxWriter
from infra.pix_inbox import PostgresPixInbox
from ledger.ports import InboxDelivery, NotifiedPix


def e2eid(n: int) -> str:
    return f"E30000003202503011200{n:011d}"


AT = datetime(2025, 3, 1, 12, 0, 0, 123000, tzinfo=UTC)


def delivery(*numbers: int, psp: str = "primary") -> InboxDelivery:
    items = tuple(NotifiedPix(e2eid(n), 100 + n, AT, f"txid{n}" if n % 2 else None) for n in numbers)
    body = json.dumps({"pix": [{"endToEndId": e2eid(n), "valor": "1.00"} for n in numbers]}).encode()
    return InboxDelivery(psp, f"d{numbers}", body, items)


@pytest.fixture
def inbox(fresh_database: str) -> Iterator[PostgresPixInbox]:
    store = PostgresPixInbox(fresh_database)
    store.ensure_schema()
    store.ensure_schema()  # idempotent
    yield store
    store.close()


def test_each_end_to_end_id_is_stored_once(inbox: PostgresPixInbox) -> None:
    assert inbox.append([delivery(1, 2), delivery(2, 3), delivery(1)]) == {e2eid(1), e2eid(2), e2eid(3)}
    assert inbox.append([delivery(3, 4), delivery(1, 1)]) == {e2eid(4)}
    assert inbox.append([delivery()]) == set()
    assert inbox.pending_count() == 4
    due = inbox.due(10)
    assert [entry.end_to_end_id for entry in due] == [e2eid(n) for n in (1, 2, 3, 4)]
    assert due[0].notified == NotifiedPix(e2eid(1), 101, AT, "txid1") and due[0].attempts == 0
    assert due[1].notified.txid is None
    rows = inbox._run(lambda conn: conn.execute("SELECT count(*), sum(pix_count) FROM pix_webhook_deliveries")
                      .fetchone())
    assert tuple(rows) == (6, 9)  # every delivery kept as it arrived, duplicates included


def test_finish_and_retry(inbox: PostgresPixInbox) -> None:
    inbox.append([delivery(1, 2, 3)])
    inbox.finish([(e2eid(1), "credited", None), (e2eid(2), "suspense", "UNKNOWN_TXID")])
    inbox.retry([(e2eid(3), "PSP unavailable", 0.3)])
    assert inbox.due(10) == []
    assert inbox.status_of(e2eid(2)) == {"status": "suspense", "attempts": 1, "note": "UNKNOWN_TXID",
                                         "psp": "primary"}
    time.sleep(0.4)
    [entry] = inbox.due(10)
    assert entry.end_to_end_id == e2eid(3) and entry.attempts == 1
    assert inbox.pending_count() == 1


def test_concurrent_group_commits_store_a_pix_once(inbox: PostgresPixInbox) -> None:
    writer = InboxWriter(inbox)
    writer.start()
    try:
        results: list[set[str]] = []
        lock = threading.Lock()
        start = threading.Barrier(20)

        def post(n: int) -> None:
            start.wait()
            futures = [writer.submit(delivery(k, n + 100)) for k in range(5)]
            mine = [f.result(timeout=30) for f in futures]
            with lock:
                results.extend(mine)

        threads = [threading.Thread(target=post, args=(n,)) for n in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        writer.stop()
    new = [e for result in results for e in result]
    assert len(new) == len(set(new)) == 5 + 20  # every Pix reported new exactly once
    assert inbox.pending_count() == 25
    assert writer.batches < writer.deliveries == 100  # group commit: fewer transactions than POSTs


def test_a_stopped_writer_refuses(inbox: PostgresPixInbox) -> None:
    writer = InboxWriter(inbox)
    with pytest.raises(Exception, match="not running"):
        writer.submit(delivery(1)).result(timeout=1)


def test_prune_deletes_only_finished_rows_and_deliveries_nothing_waits_on(inbox: PostgresPixInbox) -> None:
    inbox.append([delivery(1, 2)])
    inbox.append([delivery(3)])
    inbox.append([delivery(4)])
    inbox.finish([(e2eid(1), "credited", None), (e2eid(3), "suspense", "UNKNOWN_TXID"), (e2eid(4), "invalid", "x")])
    inbox._run(lambda conn: conn.execute(
        "UPDATE pix_inbox SET done_at = now() - interval '3 days' WHERE end_to_end_id = ANY(%s)",
        ([e2eid(1), e2eid(3)],)))
    inbox._run(lambda conn: conn.execute("UPDATE pix_webhook_deliveries SET received_at = now() - interval '3 days'"))
    now = datetime.now(UTC)
    # Rows done two days ago go; the one done just now and the one still waiting (2) stay; deliveries are kept
    # unless asked for.
    assert inbox.prune(now - timedelta(days=2)) == (2, 0)
    assert [inbox.status_of(e2eid(n)) is None for n in (1, 2, 3, 4)] == [True, False, True, False]
    # The delivery of 1 and 2 still feeds a waiting row (2): it stays; the other two go.
    assert inbox.prune(now - timedelta(days=2), deliveries_before=now - timedelta(days=2)) == (0, 2)
    assert inbox._run(lambda conn: conn.execute("SELECT pix_count FROM pix_webhook_deliveries").fetchall()) == [(2,)]
    assert [entry.end_to_end_id for entry in inbox.due(10)] == [e2eid(2)]
    # A Pix whose row was pruned is stored anew when it is delivered again.
    assert inbox.append([delivery(1)]) == {e2eid(1)}


def test_prune_works_through_many_batches(inbox: PostgresPixInbox, monkeypatch: pytest.MonkeyPatch) -> None:
    import infra.pix_inbox

    monkeypatch.setattr(infra.pix_inbox, "PRUNE_BATCH_ROWS", 3)
    inbox.append([delivery(*range(1, 11))])
    inbox.finish([(e2eid(n), "credited", None) for n in range(1, 11)])
    assert inbox.prune(datetime.now(UTC) + timedelta(seconds=1)) == (10, 0)
