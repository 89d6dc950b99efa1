"""The worked example of docs/events.md ("The hash chain, byte for byte") is true: both implementations of the
chain rule, the ledger's and the independent auditor's, give the hash the page states, from the page's own text."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from pathlib import Path

from eventsourcing.persistence import StoredEvent

from ledger.application import LedgerApplication, ledger_env
from ledger.events import TransferCommitted
from ledger.model import chain_hash_of
from projections.log_audit import chain_link

EVENTS_DOC = Path(__file__).resolve().parents[2] / "docs" / "events.md"


def example() -> tuple[str, uuid.UUID, bytes, str, str]:
    text = EVENTS_DOC.read_text()
    section = text[text.index("A worked example: previous hash"):text.index("### What the balances must obey")]
    previous = re.search(r"previous hash `([0-9a-f]{64})`", section)
    originator = re.search(r"`originator_id`\s+`([0-9a-f-]{36})`", section)
    stored = re.search(r"```json\n(.*?)\n```", section, re.S)
    hashed_text = re.search(r"The text hashed:\n\n```\n(.*?)\n```", section, re.S)
    stated = re.search(r"its SHA-256, `([0-9a-f]{64})`", section)
    assert previous and originator and stored and hashed_text and stated, "the example's parts moved"
    return (previous[1], uuid.UUID(originator[1]), stored[1].encode(), hashed_text[1], stated[1])


def test_the_auditors_rule_gives_the_stated_hash_and_text() -> None:
    previous, originator_id, stored, hashed_text, stated = example()
    state = json.loads(stored)
    assert state["chain_hash"] == stated
    assert chain_link(previous, "TransferCommitted", originator_id, 1, state) == stated
    assert hashlib.sha256(hashed_text.encode("ascii")).hexdigest() == stated


def test_the_ledgers_own_rule_gives_the_stated_hash() -> None:
    previous, originator_id, stored, _, stated = example()
    app = LedgerApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo", **ledger_env()})
    event = app.mapper.to_domain_event(StoredEvent(originator_id=originator_id, originator_version=1,
                                                   topic="ledger.events:TransferCommitted", state=stored))
    assert isinstance(event, TransferCommitted)
    assert chain_hash_of(previous, event) == event.chain_hash == stated
