"""The writer's checkpoints built from what changed since the last one (``ledger.application.CheckpointTables``),
and their rows encoded in chunks (``ledger.canonical.stored_text_in_chunks``).

A checkpoint built from the last one's rows plus the changed accounts must be the checkpoint of the whole state:
restoring it gives the live state, and its rows are those of a full capture.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson
import pytest

import ledger.application
from ledger import errors
from ledger.application import (
    CHECKPOINT_ID,
    CHECKPOINT_ROWS_CHUNK,
    CheckpointTables,
    LedgerApplication,
    LedgerMapper,
    ledger_env,
    restore_checkpoint,
)
from ledger.canonical import stored_text, stored_text_in_chunks
from ledger.chart import REQUIRED_FLAGS, AccountCode
from ledger.events import AccountOpened, LedgerCheckpoint
from ledger.inmemory import InMemoryWriterLease, RecorderTransferLookup
from ledger.model import CreateLinkedTransfers, CreateTransfer, LedgerState, OpenAccount
from ledger.parties import RegisterParty
from ledger.writer import LedgerWriter

START = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def valid_cpf(rng: random.Random) -> str:
    """A random CPF with the right check digits."""
    digits = [rng.randrange(10) for _ in range(9)]
    for weight in (10, 11):
        total = sum(d * (weight - i) for i, d in enumerate(digits))
        digits.append(total * 10 % 11 % 10)
    return "".join(map(str, digits))


@pytest.fixture
def writer() -> Iterator[LedgerWriter]:
    app = LedgerApplication(env=ledger_env())
    # No checkpoint of its own (the test captures), and the in-memory lease is process wide: a unique name.
    writer = LedgerWriter(app, InMemoryWriterLease(f"test-{uuid.uuid4()}"), RecorderTransferLookup(app.recorder),
                          clock=lambda: START, wait_ms=0.0, checkpoint_interval=10**9).start()
    yield writer
    writer.stop()


def open_wallets(writer: LedgerWriter, count: int) -> list[UUID]:
    ids = [uuid.uuid4() for _ in range(count)]
    for account_id in ids:
        writer.open_account(OpenAccount(account_id, AccountCode.INVESTOR_WALLET,
                                        REQUIRED_FLAGS[AccountCode.INVESTOR_WALLET]))
    return ids


def rows_of(checkpoint: LedgerCheckpoint) -> tuple[Any, ...]:
    return (checkpoint.position, checkpoint.chain_hash, sorted(map(repr, checkpoint.accounts)),
            checkpoint.pending, checkpoint.parties, checkpoint.pix)


def rebuilt(tables: CheckpointTables) -> list[UUID]:
    """The accounts whose rows the last build made again, in order (what the capture copied)."""
    return [UUID(str(account_id)) for account_id in tables.last_rebuilt]


def test_checkpoints_from_changes_are_the_checkpoints_of_the_whole_state(writer: LedgerWriter) -> None:
    rng = random.Random(7)
    settlement = uuid.uuid4()
    writer.open_account(OpenAccount(settlement, AccountCode.PIX_SETTLEMENT, REQUIRED_FLAGS[AccountCode.PIX_SETTLEMENT]))
    wallets = open_wallets(writer, 400)
    tables = CheckpointTables()
    tables.capture(writer.state)()
    holds: list[UUID] = []
    settled = 0
    for round_number in range(6):
        # Each round: new wallets and parties, credits, transfers between wallets, holds posted and voided.
        wallets += open_wallets(writer, rng.randrange(0, 4))
        for n in range(rng.randrange(0, 3)):
            writer.register_party(RegisterParty(f"party:{round_number}:{n}", "investor", "Maria da Silva",
                                                valid_cpf(rng), "maria@example.com.br", "+5511987654321"))
        for n in range(rng.randrange(5, 25)):
            key = f"t:{round_number}:{n}"
            if rng.random() < 0.3:
                writer.transfer(CreateTransfer(key, settlement, rng.choice(wallets), rng.randint(1, 10_000)))
            elif rng.random() < 0.3:
                debit, credit = rng.sample(wallets, 2)
                writer.transfer(CreateTransfer(key + ":f", settlement, debit, 50))
                holds.append(writer.transfer(CreateTransfer(key, debit, credit, rng.randint(1, 10),
                                                            kind="pending")).id)
            elif holds and rng.random() < 0.5:
                kind = rng.choice(["post_pending", "void_pending"])
                writer.transfer(CreateTransfer(key, None, None, None, kind=kind, pending_id=holds.pop()))
                settled += 1
            else:
                debit, credit = rng.sample(wallets, 2)
                writer.transfer(CreateTransfer(key, settlement, debit, 50))
                writer.transfer(CreateTransfer(key + ":x", debit, credit, rng.randint(1, 50)))
        # The writer is idle between commands here, so this thread may read its state.
        state = writer.state
        incremental = tables.capture(state)()
        assert 0 < len(rebuilt(tables)) < len(state.accounts) / 4, "the capture copied every account"
        full = LedgerApplication.capture_checkpoint(state)()
        assert rows_of(incremental) == rows_of(full), f"round {round_number}"
        restored = LedgerState()
        restore_checkpoint(restored, incremental)
        assert restored.fingerprint() == state.fingerprint()
    assert holds and settled  # the workload did take the pending paths (some holds stay open)


def test_a_capture_after_the_first_copies_only_the_changed_accounts(writer: LedgerWriter) -> None:
    settlement = uuid.uuid4()
    writer.open_account(OpenAccount(settlement, AccountCode.PIX_SETTLEMENT, REQUIRED_FLAGS[AccountCode.PIX_SETTLEMENT]))
    wallets = open_wallets(writer, 200)
    tables = CheckpointTables()
    tables.capture(writer.state)()
    assert len(rebuilt(tables)) == 201  # the first capture takes every account
    writer.transfer(CreateTransfer("a", settlement, wallets[0], 100))
    writer.transfer(CreateTransfer("b", settlement, wallets[0], 100))
    writer.transfer(CreateTransfer("c", wallets[0], wallets[1], 50))
    new = open_wallets(writer, 1)
    # Each changed account once, however often it changed.
    checkpoint = tables.capture(writer.state)()
    assert sorted(rebuilt(tables)) == sorted([settlement, wallets[0], wallets[1], *new])
    assert len(checkpoint.accounts) == 202
    # Each changed account is listed once, however often it changes.
    for n in range(60):
        writer.transfer(CreateTransfer(f"again:{n}", settlement, wallets[n % 3], 1))
    tables.capture(writer.state)()
    assert sorted(rebuilt(tables)) == sorted([settlement, *wallets[:3]])
    # However many changed, only those are read again.
    for n in range(150):
        writer.transfer(CreateTransfer(f"many:{n}", settlement, wallets[n], 1))
    tables.capture(writer.state)()
    assert sorted(rebuilt(tables)) == sorted([settlement, *wallets[:150]])


@pytest.mark.parametrize("first", [True, False], ids=["every-account", "changes"])
def test_a_build_sees_the_accounts_as_they_were_at_the_capture(writer: LedgerWriter, first: bool,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # The build runs while the writer goes on changing accounts: what it reads must be the state at the capture.
    monkeypatch.setattr(ledger.application, "CHECKPOINT_ROWS_CHUNK", 3)  # a pause every 3 accounts
    settlement = uuid.uuid4()
    writer.open_account(OpenAccount(settlement, AccountCode.PIX_SETTLEMENT, REQUIRED_FLAGS[AccountCode.PIX_SETTLEMENT]))
    wallets = open_wallets(writer, 30)
    for n, wallet in enumerate(wallets):
        writer.transfer(CreateTransfer(f"fund:{n}", settlement, wallet, 1_000))
    tables = CheckpointTables()
    if not first:
        tables.capture(writer.state)()
        for n in range(12):
            writer.transfer(CreateTransfer(f"before:{n}", wallets[n], wallets[n + 1], 10))
    state = writer.state
    writes: list[str] = []

    def writer_goes_on() -> None:
        # Between two chunks of the build: the first changes since the capture (of accounts the build has read
        # and of ones it has not), a linked batch refused after it changed accounts (rolled back), a new account.
        step = len(writes)
        writes.append("")
        if step == 1:
            with pytest.raises(errors.LinkedBatchFailed):
                writer.linked(CreateLinkedTransfers((CreateTransfer("l1", wallets[5], wallets[6], 1),
                                                     CreateTransfer("l2", wallets[7], wallets[8], 10**9))))
        elif step == 2:
            open_wallets(writer, 1)
        else:
            writer.transfer(CreateTransfer(f"during:{step}", wallets[12 - step], wallets[29 - step], 7))

    build = tables.capture(state, writer_goes_on)
    at_capture = LedgerApplication.capture_checkpoint(state)()  # every account copied, now (the writer is idle)
    checkpoint = build()
    assert len(writes) >= 5, "the build did not run while the writer changed accounts"
    assert rows_of(checkpoint) == rows_of(at_capture)
    assert state.saved_for_build is None  # the build is over: nothing more is saved for it
    # The next capture takes what changed during the build.
    assert rows_of(tables.capture(state)()) == rows_of(LedgerApplication.capture_checkpoint(state)())


def test_an_account_opened_by_a_command_rolled_back_leaves_no_row(writer: LedgerWriter) -> None:
    open_wallets(writer, 30)
    tables = CheckpointTables()
    tables.capture(writer.state)()
    assert len(rebuilt(tables)) == 30
    state = writer.state
    ghost = uuid.uuid4()
    state.begin()
    state.apply(AccountOpened(originator_id=ghost, originator_version=1, chain_hash="0" * 64, timestamp=START,
                              ledger=986, code=int(AccountCode.INVESTOR_WALLET), flags=0, reference="",
                              owner_id=None), verify_chain=False)
    state.rollback()
    assert ghost not in state.accounts
    checkpoint = tables.capture(state)()
    assert rebuilt(tables) == []  # a capture of the changes, which were only the ghost's
    assert [row for row in checkpoint.accounts if row[0] == str(ghost)] == []
    assert len(checkpoint.accounts) == 30


def test_a_failed_build_makes_the_next_capture_full(writer: LedgerWriter) -> None:
    wallets = open_wallets(writer, 5)
    tables = CheckpointTables()
    tables.capture(writer.state)()

    def broken() -> None:
        raise RuntimeError("the thread building the checkpoint failed")

    wallets += open_wallets(writer, 1)
    build = tables.capture(writer.state, broken)  # the build pauses after its first chunk of rows, and fails there
    with pytest.raises(RuntimeError):
        build()
    writer.open_account(OpenAccount(uuid.uuid4(), AccountCode.INVESTOR_WALLET,
                                    REQUIRED_FLAGS[AccountCode.INVESTOR_WALLET]))
    checkpoint = tables.capture(writer.state)()
    assert rows_of(checkpoint) == rows_of(LedgerApplication.capture_checkpoint(writer.state)())
    assert {row[0] for row in checkpoint.accounts} >= {str(w) for w in wallets}


def test_rows_encoded_in_chunks_are_the_bytes_of_one_encoding() -> None:
    rng = random.Random(3)
    rows = [[str(uuid.uuid4()), 986, 2, 1, rng.choice(["", "ação ✓ \"q\" \\ \n", "\x7f", "accounts\":[]"]),
             rng.randrange(2**40), 0, 0, rng.randrange(2**62), 3, None] for _ in range(2 * CHECKPOINT_ROWS_CHUNK + 5)]
    state = {"timestamp": START, "position": 9, "chain_hash": "ab" * 32, "accounts": rows,
             "pending": [[str(uuid.uuid4()), 500, None]], "parties": rows[:CHECKPOINT_ROWS_CHUNK + 1],
             "pix": {"deposits": "x"}, "class_version": 3}
    pauses: list[int] = []
    chunked = stored_text_in_chunks(dict(state), ("accounts", "parties"), CHECKPOINT_ROWS_CHUNK,
                                    lambda: pauses.append(1))
    assert chunked == stored_text(dict(state))
    assert orjson.loads(chunked)["accounts"] == rows
    assert len(pauses) == 3 + 2  # a pause after each chunk of each long list


def test_rows_that_are_not_plain_are_left_to_the_one_encoding() -> None:
    rows: list[list[object]] = [[str(uuid.uuid4()), 1.5] for _ in range(5)] + [[2**70]]
    state = {"accounts": rows, "position": 1}
    assert stored_text_in_chunks(dict(state), ("accounts",), 2, lambda: None) == stored_text(dict(state))


def test_a_checkpoint_saved_with_pauses_stores_the_mappers_bytes() -> None:
    app = LedgerApplication(env=ledger_env())
    assert isinstance(app.mapper, LedgerMapper)
    rows = [[str(uuid.uuid4()), 986, 2, 1, "", n, 0, 0, 0, 1, None] for n in range(CHECKPOINT_ROWS_CHUNK * 2)]
    checkpoint = LedgerCheckpoint(
        originator_id=CHECKPOINT_ID, originator_version=77, timestamp=START, position=77, chain_hash="cd" * 32,
        accounts=rows, pending=[], parties=rows[:10], pix={},
    )
    assert app.mapper.checkpoint_to_stored_event(checkpoint, lambda: None) == app.mapper.to_stored_event(checkpoint)
    app.save_checkpoint(checkpoint, lambda: None)
    assert app.latest_checkpoint() == checkpoint


def test_a_restarted_writer_copies_only_what_changed_since_its_checkpoint() -> None:
    app = LedgerApplication(env=ledger_env())
    lease = f"test-{uuid.uuid4()}"

    def start(interval: int) -> LedgerWriter:
        return LedgerWriter(app, InMemoryWriterLease(lease), RecorderTransferLookup(app.recorder),
                            clock=lambda: START, wait_ms=0.0, checkpoint_interval=interval).start()

    writer = start(10**9)
    settlement = uuid.uuid4()
    writer.open_account(OpenAccount(settlement, AccountCode.PIX_SETTLEMENT, REQUIRED_FLAGS[AccountCode.PIX_SETTLEMENT]))
    wallets = open_wallets(writer, 40)
    app.write_checkpoint(writer.state)
    writer.transfer(CreateTransfer("after-the-checkpoint", settlement, wallets[0], 100))  # replayed at the restart
    writer.stop()
    writer = start(1)  # a checkpoint after every batch, in the writer thread
    writer.transfer(CreateTransfer("after-the-restart", settlement, wallets[1], 100))
    writer.stop()  # the checkpoint follows the answer: stopping waits for it
    assert sorted(rebuilt(writer._checkpoint_tables)) == sorted([settlement, wallets[0], wallets[1]])
    checkpoint = app.latest_checkpoint()
    assert checkpoint is not None and checkpoint.position == writer.state.position
    restored = LedgerState()
    restore_checkpoint(restored, checkpoint)
    assert restored.fingerprint() == writer.state.fingerprint()
