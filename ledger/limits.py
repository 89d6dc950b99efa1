"""Every limit of the ledger layer, in one place (TIGER_STYLE: a limit on everything).

Units come last in the names. The relationships between limits are asserted at import time, so a bad
edit fails loudly instead of producing a ledger that can overflow.
"""

from typing import Final

#: BRL is ledger 986 (ISO 4217 numeric code), the only currency ledger today.
LEDGER_BRL: Final = 986

#: The public API speaks PIX amounts, `^\d{1,13}\.\d{2}$`, so one amount is at most 13 integer digits.
AMOUNT_CENTAVOS_MAX: Final = 9_999_999_999_999_99

#: Balances are stored as Postgres `bigint` in the read models: they must never pass a signed 64-bit integer.
BALANCE_CENTAVOS_MAX: Final = 2**63 - 1

#: Idempotency keys are client supplied; bound them so an index entry stays small.
IDEMPOTENCY_KEY_LENGTH_MAX: Final = 128
#: Free-text reference stored with a transfer or account (e.g. "loan:42", a PIX endToEndId).
REFERENCE_LENGTH_MAX: Final = 200

#: A linked batch succeeds or fails as one; bounded like TigerBeetle's batch of 8,190 events.
LINKED_TRANSFERS_MAX: Final = 8_190

#: Independent transfers in one command (``CreateTransfers``): the same bound as a linked batch.
TRANSFERS_PER_COMMAND_MAX: Final = LINKED_TRANSFERS_MAX

#: A pending transfer times out at most this long after it was created (a PIX devolução window is 90 days).
PENDING_TIMEOUT_S_MAX: Final = 90 * 24 * 3600

#: Group commit: how many commands one batch carries and how long the writer waits to fill it.
GROUP_COMMIT_COMMANDS_MAX: Final = 2_000
GROUP_COMMIT_WAIT_MS_MAX: Final = 2.0
#: A single linked batch may be larger than a whole group commit; it is then committed alone.
GROUP_COMMIT_EVENTS_MAX: Final = 2 * LINKED_TRANSFERS_MAX

#: How many commands may wait in the writer's queue before new ones are refused (back-pressure).
WRITER_QUEUE_DEPTH_MAX: Final = 50_000

#: A caller waits at most this long for its command to be committed.
COMMAND_TIMEOUT_S_MAX: Final = 30.0

#: A checkpoint of the ledger state is written after this many events, so restart replays a bounded tail.
CHECKPOINT_EVENTS_INTERVAL: Final = 50_000

#: After this many events the writer freezes its heap out of the cyclic GC (see ``LedgerWriter._freeze_heap``).
#: At 2,000 no full collection ran in any scenario of `razao bench ledger` (at 10,000: 1 to 11 per scenario, of up to
#: 69 ms each); freezing is a constant-time list splice. docs/benchmarks.md has the measurements, including the
#: check that the API process hides no garbage in the frozen generation.
GC_FREEZE_EVENTS_INTERVAL: Final = 2_000

#: Recently committed transfers kept in memory for idempotent replays; older ones are looked up in the store.
TRANSFER_INDEX_RECENT_MAX: Final = 1_000_000

#: Notification-log page size when rebuilding state from the store.
REBUILD_PAGE_EVENTS_MAX: Final = 10_000

assert AMOUNT_CENTAVOS_MAX < BALANCE_CENTAVOS_MAX
# Every transfer of the largest linked batch at the largest amount still fits in a balance.
assert LINKED_TRANSFERS_MAX * AMOUNT_CENTAVOS_MAX < BALANCE_CENTAVOS_MAX
assert GROUP_COMMIT_EVENTS_MAX >= 2 * LINKED_TRANSFERS_MAX
assert GROUP_COMMIT_COMMANDS_MAX <= WRITER_QUEUE_DEPTH_MAX
assert 0 < GROUP_COMMIT_WAIT_MS_MAX < 1_000 * COMMAND_TIMEOUT_S_MAX
