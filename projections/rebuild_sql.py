"""The set-based rebuild: the read models built inside Postgres from the raw records of the ledger's log (ADR 0011).

``projections.projector`` stays the definition of the read models; this module produces exactly its rows, with SQL
over sets instead of Python per event (a test compares the two table by table). Into a schema of the read database
whose tables were just created bare (``projections.rebuild`` swaps it in for the target at the end):

1. copy: the transfers (most records) are decoded where the log is, by parallel workers sharing one sequential read
   of its table, each JSON state parsed once (``jsonb_to_record``) into the typed columns of ``_DECODED_TRANSFER``,
   which a binary ``COPY ... TO STDOUT`` pipes block by block into ``COPY ... FROM STDIN`` of a staging table; the
   other records arrive raw (id, aggregate id, version, topic, JSON state as bytes) the same way. No record is
   looked at in Python. A log that cannot run queries (the in-memory event store of tests) is paged in raw and its
   transfers decoded by the read database with the same query.
2. decode: every other record is parsed into ``jsonb``. Each row is flagged with whether the record fits the
   contract: a topic of the ledger's module, a stored class version that ``STORED_VERSIONS`` maps, every field the
   contract's builder reads (``STORED_FIELDS``) with the wrappers it unwraps (``STORED_WRAPPERS``), the shapes the
   rows need. One aggregate over the flags finds the first record that does not fit, which the contract's own
   ``LogDecoder`` then decodes (read again from the log) to raise exactly its error (``UnknownEventType``,
   ``UnsupportedEventVersion``, ``MalformedEvent``); with ``until`` the same aggregate finds where the prefix ends.
   A state that is not JSON fails the parse itself (a ``DataError``), and so does a value the contract refuses (or
   a missing field that lands in a NOT NULL column): ``projections.rebuild`` then finds that record with the
   contract's decoder. The staging tables are committed, for the next step's connections.
3. tables (``steps``, run by ``run_steps`` on two connections, each step its own transaction): one ``INSERT ...
   SELECT`` per read-model table, then primary keys (dropped before the load: sorting once is several times cheaper
   than growing a b-tree row by row, and the result is the same catalog; a duplicate fails there as it would have
   failed at insert), foreign keys and indexes, the index builds of one table side by side.
4. checks: what the projector's row changes would have refused (a close of an account never opened, a resolution
   of a transfer that holds nothing, a pending transfer ended twice, an unknown kind or resolution) raises
   ``ProjectionBug``.

``finish`` then adds what needs every step (the entries' primary key and foreign keys, the balances) and drops the
staging tables; the caller commits the swap.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from psycopg import sql

from ledger.contracts import (
    DOMAIN_MODULE,  # the module every stored topic must name
    GENESIS_CHAIN_HASH,
    STORED_VERSIONS,
    AccountCode,
    LogDecoder,
    MalformedEvent,
    is_debit_normal,
)
from projections import schema as schema_ddl
from projections.bootstrap import RAW_LOG_COLUMNS, NotificationLog
from projections.ledger_identity import chain_hash_at, log_record
from projections.projector import STATUS_OF_KIND
from projections.store import Conn, ProjectionBug

#: ``progress(stage, done, total)``: the stage's name, how far it got and where it ends (``None``: unknown). A stage
#: named ``group/detail`` is a step of ``group`` (the table being built, say), ``done`` counting the steps.
Stage = Callable[[str, int, int | None], None]

#: Records per progress report while the log's records stream in.
PROGRESS_EVENTS: Final = 10_000
#: Records per page when a log cannot stream its records (an in-memory event store).
PAGE_EVENTS: Final = 10_000

_COMMON_FIELDS: Final = ("timestamp", "chain_hash")
#: Fields of the stored state that the contract's builder of each (type, stored class version) reads, besides
#: ``timestamp`` and ``chain_hash``: a record without one is refused by ``LogDecoder`` (``MalformedEvent``), so the
#: set-based check refuses it too. A test holds this to ``LogDecoder`` field by field and version by version.
STORED_FIELDS: Final[Mapping[tuple[str, int], tuple[str, ...]]] = {
    ("PartyRegistered", 1): ("kind", "wallet_id"),
    ("AccountOpened", 1): ("ledger", "code", "flags", "reference"),
    ("AccountOpened", 2): ("ledger", "code", "flags", "reference", "owner_id"),
    ("AccountClosed", 1): ("flags",),
    ("TransferCommitted", 1): ("key", "kind", "ledger", "code", "debit_account_id", "credit_account_id",
                               "amount_centavos", "requested_amount_centavos", "pending_id", "timeout_s",
                               "reference", "linked_batch_id", "debit_after", "credit_after"),
    ("PendingTransferResolved", 1): ("resolution", "by_transfer_id", "amount_centavos"),
    ("PendingTransferExpired", 1): ("debit_account_id", "credit_account_id", "amount_centavos", "debit_after",
                                    "credit_after"),
    ("DepositRequested", 1): ("wallet_id", "amount_centavos", "expires_in_s", "txid", "psp", "charge_created_at"),
    ("PixReceived", 1): ("end_to_end_id", "psp", "txid", "amount_centavos", "processed_at", "source", "transfer_id",
                         "credit_account_id", "deposit_id", "suspense_reason"),
    ("ReconciliationItemOpened", 1): ("end_to_end_id", "reason", "amount_centavos", "account_id"),
    ("ReconciliationItemResolved", 1): ("resolution", "wallet_id", "amount_centavos", "transfer_id"),
    ("WithdrawalRequested", 1): ("wallet_id", "amount_centavos", "pix_key_type", "payment_id", "hold_id"),
    ("WithdrawalCompleted", 1): ("psp", "end_to_end_id", "transfer_id"),
    ("WithdrawalFailed", 1): ("psp", "reason", "transfer_id"),
    ("PixRefundRequested", 1): ("end_to_end_id", "psp", "refund_id", "amount_centavos", "hold_id",
                                "source_account_id", "requested_by"),
    ("PixRefundConcluded", 1): ("status", "return_id", "reason", "transfer_id"),
}
#: The fields of each stored version that the event store wraps (``{"_type_": ..., "_data_": ...}``) and the contract
#: unwraps, refusing any other shape: ``uuid`` (32 hex digits), ``uuid?`` (or null) and ``time``. The check tests
#: the wrappers of every record but transfers, whose wrapped fields are unwrapped into columns (see ``_uuid``).
STORED_WRAPPERS: Final[Mapping[tuple[str, int], Mapping[str, str]]] = {
    ("PartyRegistered", 1): {"wallet_id": "uuid"},
    ("AccountOpened", 1): {},
    ("AccountOpened", 2): {"owner_id": "uuid?"},
    ("AccountClosed", 1): {},
    ("TransferCommitted", 1): {"debit_account_id": "uuid", "credit_account_id": "uuid", "pending_id": "uuid?",
                               "linked_batch_id": "uuid?"},
    ("PendingTransferResolved", 1): {"by_transfer_id": "uuid"},
    ("PendingTransferExpired", 1): {"debit_account_id": "uuid", "credit_account_id": "uuid"},
    ("DepositRequested", 1): {"wallet_id": "uuid", "charge_created_at": "time"},
    ("PixReceived", 1): {"processed_at": "time", "transfer_id": "uuid", "credit_account_id": "uuid",
                         "deposit_id": "uuid?"},
    ("ReconciliationItemOpened", 1): {"account_id": "uuid"},
    ("ReconciliationItemResolved", 1): {"wallet_id": "uuid?", "transfer_id": "uuid?"},
    ("WithdrawalRequested", 1): {"wallet_id": "uuid", "hold_id": "uuid"},
    ("WithdrawalCompleted", 1): {"transfer_id": "uuid"},
    ("WithdrawalFailed", 1): {"transfer_id": "uuid"},
    ("PixRefundRequested", 1): {"hold_id": "uuid", "source_account_id": "uuid"},
    ("PixRefundConcluded", 1): {"transfer_id": "uuid"},
}
#: Types whose ``debit_after``/``credit_after`` become rows: the contract builds them into four-field balances.
_WITH_BALANCES: Final = frozenset({"TransferCommitted", "PendingTransferExpired"})

#: The fields of a stored transfer as the decode reads them (``jsonb_to_record``'s column definitions).
_TRANSFER_FIELDS: Final = (
    ("timestamp", "jsonb"), ("chain_hash", "jsonb"), ("class_version", "jsonb"), ("key", "text"), ("kind", "text"),
    ("ledger", "integer"), ("code", "integer"), ("debit_account_id", "jsonb"), ("credit_account_id", "jsonb"),
    ("amount_centavos", "bigint"), ("requested_amount_centavos", "jsonb"), ("pending_id", "jsonb"),
    ("timeout_s", "integer"), ("reference", "text"), ("linked_batch_id", "jsonb"), ("debit_after", "bigint[]"),
    ("credit_after", "bigint[]"),
)
assert {name for name, _ in _TRANSFER_FIELDS} >= {*_COMMON_FIELDS, *STORED_FIELDS[("TransferCommitted", 1)]}
#: Fields whose absence the contract refuses although null is allowed (or nothing stores them): a JSON null and a
#: missing field both read as NULL, so the check asks the state for their keys. Any other missing field is NULL,
#: which the check or a NOT NULL column of the tables refuses.
_KEYS_PRESENT: Final = ("chain_hash", "requested_amount_centavos", "pending_id", "linked_batch_id")
_BALANCE_FIELDS: Final = ("debits_pending", "debits_posted", "credits_pending", "credits_posted")
#: A decoded transfer, as the staging table holds it (its columns and types are those the decode's select yields,
#: in order: a binary COPY of the select goes straight into it).
_DECODED_TRANSFER: Final = (
    ("position", "bigint"), ("transfer_id", "uuid"), ("key", "text"), ("kind", "text"), ("ledger", "integer"),
    ("code", "integer"), ("debit_account_id", "uuid"), ("credit_account_id", "uuid"), ("amount_centavos", "bigint"),
    ("requested_amount_centavos", "bigint"), ("pending_id", "uuid"), ("timeout_s", "integer"),
    ("reference", "text"), ("linked_batch_id", "uuid"), ("recorded_at", "timestamptz"),
    *((f"{side}_{name}", "bigint") for side in ("debit", "credit") for name in _BALANCE_FIELDS),
    ("fits", "boolean"),
)

# Scratch tables, in the schema being built (unlogged: nothing of them reaches the WAL) and dropped before the commit.
# Not temporary tables, because parallel workers cannot read those.
_SCRATCH: Final = {"log": "_rebuild_log", "transfers": "_rebuild_transfers", "facts": "_rebuild_facts"}


def building_schema(schema: str) -> str:
    """The schema a rebuild of ``schema`` is built in before it takes that name: one per target (so a rebuild
    killed half-way is replaced by the next rebuild of the same target), a valid name however long the target's."""
    return f"_building_{schema[:40]}_{zlib.crc32(schema.encode()):08x}"


def topic(type_name: str) -> str:
    """The stored topic of a ledger event type (``<module>:<class name>``)."""
    return f"{DOMAIN_MODULE}:{type_name}"


_TOPICS: Final = {name: sql.Literal(topic(type_name)) for name, type_name in (
    ("transfer_committed", "TransferCommitted"), ("party", "PartyRegistered"), ("opened", "AccountOpened"),
    ("closed", "AccountClosed"), ("resolved", "PendingTransferResolved"), ("expired", "PendingTransferExpired"))}


@dataclass(frozen=True)
class Built:
    position: int
    chain_hash: str
    events: int


# ------------------------------------------------------------------------------------------- SQL fragments
# Statements are templates composed with psycopg's `sql` module: `{s}` is the schema, `{log}`, `{transfers}`,
# `{facts}` the scratch tables, `{transfer_committed}` ... the topics, and the rest
# fragments below.


def _statement(template: str, schema: str, **fragments: sql.Composable) -> sql.Composed:
    names = {key: sql.Identifier(table) for key, table in _SCRATCH.items()}
    return sql.SQL(template).format(s=sql.Identifier(schema), **names, **_TOPICS, **fragments)


def _field(state: str, name: str) -> sql.Composed:
    """``<state>-><name>``: a field of the stored state, as jsonb."""
    return sql.SQL("({}->{})").format(sql.SQL(state), sql.Literal(name))


def _uuid(value: sql.Composable, *, optional: bool = False) -> sql.Composed:
    """The uuid of a stored ``{"_type_": "uuid_hex", "_data_": "<32 hex>"}``: any other value fails the cast, as the
    contract refuses it (``MalformedEvent``), and null is NULL only where the contract allows it. A missing field is
    NULL too: the record's check refuses it."""
    null = "WHEN {v} = 'null' THEN NULL " if optional else ""
    return sql.SQL("(CASE WHEN {v} IS NULL THEN NULL " + null + "WHEN {v}->>'_type_' = 'uuid_hex' AND "
                   "length({v}->>'_data_') = 32 THEN {v}->>'_data_' ELSE 'not a stored uuid' END)::uuid"
                   ).format(v=value)


def _recorded_at(state: str) -> sql.Composed:
    """``recorded_at``: the state's timestamp (its ``_type_`` is part of the record's check)."""
    return sql.SQL("({}->'timestamp'->>'_data_')::timestamptz").format(sql.SQL(state))


def _balances(state: str, side: str) -> sql.Composed:
    """The four post-state fields of ``<side>_after`` as columns ``<side>_debits_pending`` ..."""
    return sql.SQL(", ").join(
        sql.SQL("({}->>{})::bigint AS {}").format(_field(state, f"{side}_after"), sql.Literal(i),
                                                   sql.Identifier(f"{side}_{name}"))
        for i, name in enumerate(_BALANCE_FIELDS))


def _array(values: tuple[Any, ...] | list[Any]) -> sql.Composed:
    return sql.SQL("ARRAY[{}]").format(sql.SQL(", ").join(sql.Literal(v) for v in values))


def _transfer_fits(version: int) -> sql.Composed:
    """Whether a transfer record (its state as ``j.s``, its fields as ``r``) fits the contract, never NULL: a state
    that is not an object, a value of the wrong type or a wrapped uuid that is not 32 digits fails the parse or a
    cast instead."""
    return sql.SQL("coalesce(CASE WHEN j.s ? 'class_version' THEN r.class_version = {version}::jsonb ELSE {default} "
                   "END AND r.timestamp->>'_type_' = 'datetime_iso' AND r.debit_account_id->>'_type_' = 'uuid_hex' "
                   "AND r.credit_account_id->>'_type_' = 'uuid_hex' AND j.s ?& {present} "
                   "AND array_ndims(r.debit_after) = 1 AND array_length(r.debit_after, 1) = 4 "
                   "AND array_ndims(r.credit_after) = 1 AND array_length(r.credit_after, 1) = 4, false)").format(
        version=sql.Literal(str(version)), default=sql.Literal(version == 1), present=_array(_KEYS_PRESENT))


def _fact_fits(state: str) -> sql.Composed:
    """Whether a record other than a transfer fits the contract as ``LogDecoder`` decides (never NULL)."""
    missing = (set(STORED_VERSIONS) ^ set(STORED_FIELDS)) | (set(STORED_VERSIONS) ^ set(STORED_WRAPPERS))
    if missing:  # a new stored version needs its fields listed before a set-based rebuild can read it
        raise AssertionError(f"STORED_FIELDS/STORED_WRAPPERS and STORED_VERSIONS differ in {sorted(missing)}")
    branches = []
    for (type_name, version), fields in STORED_FIELDS.items():
        if type_name == "TransferCommitted":
            continue
        shape = _balance_shape(state) if type_name in _WITH_BALANCES else sql.SQL("")
        wrappers = sql.SQL("").join(sql.SQL(" AND ") + _wrapper(_field(state, name), kind)
                                    for name, kind in STORED_WRAPPERS[(type_name, version)].items())
        branches.append(sql.SQL("WHEN topic = {} AND coalesce({}, '1') = {}::jsonb THEN {} ?& {}{}{}").format(
            sql.Literal(topic(type_name)), _field(state, "class_version"), sql.Literal(str(version)), sql.SQL(state),
            _array((*_COMMON_FIELDS, *fields)), shape, wrappers))
    return sql.SQL("coalesce(jsonb_typeof({s}) = 'object' AND {s}->'timestamp'->>'_type_' = 'datetime_iso' "
                   "AND CASE {branches} ELSE false END, false)").format(s=sql.SQL(state),
                                                                        branches=sql.SQL(" ").join(branches))


def _wrapper(value: sql.Composable, kind: str) -> sql.Composed:
    """Whether a wrapped field has the shape the contract unwraps (a time must also be one Postgres can read)."""
    if kind == "time":
        return sql.SQL("({v}->>'_type_' = 'datetime_iso' AND ({v}->>'_data_')::timestamptz IS NOT NULL)").format(
            v=value)
    shape = sql.SQL("({v}->>'_type_' = 'uuid_hex' AND length({v}->>'_data_') = 32)").format(v=value)
    return sql.SQL("({v} = 'null' OR {shape})").format(v=value, shape=shape) if kind == "uuid?" else shape


def _balance_shape(state: str) -> sql.Composed:
    """Both post-states are arrays of four (the contract builds four-field balances of them)."""
    return sql.SQL("").join(
        sql.SQL(" AND CASE WHEN jsonb_typeof({a}) = 'array' THEN jsonb_array_length({a}) = 4 ELSE false END")
        .format(a=_field(state, f"{side}_after")) for side in ("debit", "credit"))


# -------------------------------------------------------------------------------------------------- steps


def load_log(conn: Conn, log: NotificationLog, schema: str, upto: int, progress: Stage) -> None:
    """Step 1: the records with ``0 < id <= upto`` into the staging tables: the transfers decoded where the log is,
    every other record raw. A log that cannot run queries (an in-memory event store) is paged in raw and its
    transfers decoded here."""
    columns = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, t in RAW_LOG_COLUMNS)
    conn.execute(_statement("CREATE UNLOGGED TABLE {s}.{log} ({columns})", schema, columns=columns))
    decoded = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, t in _DECODED_TRANSFER)
    conn.execute(_statement("CREATE UNLOGGED TABLE {s}.{transfers} ({decoded})", schema, decoded=decoded))
    progress("copy", 0, upto)
    copy_select = getattr(log, "copy_select", None)
    with conn.cursor() as cur:
        if copy_select is None:
            _page_in(cur, log, schema, upto, progress)
            cur.execute(_statement("INSERT INTO {s}.{transfers} {decode}", schema,
                                   decode=_decode_transfers(_statement("{s}.{log}", schema))))
            return
        # One COPY each over the whole range, decoded by the log's parallel workers. Binary COPY sends a message
        # per record, so counting blocks counts records for the progress bar.
        others = sql.SQL("SELECT * FROM {} l WHERE l.topic IS DISTINCT FROM {}").format
        settings = _PARALLEL_DECODE_WHOLE if 2 * upto >= (log.max_notification_id() or 0) else _PARALLEL_DECODE
        done = 0
        for into, select in (
                (_statement("COPY {s}.{transfers} FROM STDIN (FORMAT BINARY)", schema), _decode_transfers),
                (_statement("COPY {s}.{log} FROM STDIN (FORMAT BINARY)", schema),
                 lambda records: others(records, _TOPICS["transfer_committed"]))):
            with ExitStack() as stack:
                copy = None
                for block in copy_select(0, upto, select, settings):
                    if copy is None:  # an empty range sends nothing, not even the binary header
                        copy = stack.enter_context(cur.copy(into))
                    copy.write(block)
                    done += 1
                    if done % PROGRESS_EVENTS == 0:
                        progress("copy", min(done, upto), upto)
        progress("copy", upto, upto)


#: Where the log decodes transfers: by parallel workers, and without compiling a one-off query. The planner's
#: defaults say otherwise for a query whose cost is the parsing: starting workers and passing rows on look dearer.
_PARALLEL_DECODE: Final = {"parallel_setup_cost": "0", "parallel_tuple_cost": "0", "jit": "off"}
#: For most of the log, also one sequential read of its table shared among the workers: over a log written since its
#: table's statistics were last gathered, the index looks cheaper and no parallel plan is chosen. A rebuild as of an
#: early position keeps the index (reading the whole table for a small prefix would cost more).
_PARALLEL_DECODE_WHOLE: Final = {**_PARALLEL_DECODE, "enable_indexscan": "off", "enable_bitmapscan": "off"}


def _page_in(cur: Any, log: NotificationLog, schema: str, upto: int, progress: Stage) -> None:
    with cur.copy(_statement("COPY {s}.{log} FROM STDIN", schema)) as copy:
        start = 1
        while start <= upto and (page := log.select_notifications(start, limit=PAGE_EVENTS, stop=upto)):
            for n in page:
                copy.write_row((n.id, n.originator_id, n.originator_version, n.topic, n.state))
            start = page[-1].id + 1
            progress("copy", page[-1].id, upto)


def stage(conn: Conn, log: NotificationLog, schema: str, *, until: datetime | None,
          progress: Stage) -> tuple[Built, PrimaryKeys]:
    """Step 2 (see the module doc) over the staged records, after dropping the bare tables' primary keys (returned,
    for ``steps`` and ``finish`` to build again). Raises the contract's error for the first record that does not fit
    it, or the database's error for a value it refuses."""
    keys = _drop_primary_keys(conn, schema)
    return _decode(conn, log, schema, until, progress), keys


@dataclass(frozen=True)
class PrimaryKey:
    name: str
    columns: str  # the catalog's own rendering: ``(account_id, "position")``

    def add(self, schema: str, table: str) -> sql.Composed:
        return sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY {}").format(
            sql.Identifier(schema, table), sql.Identifier(self.name), sql.SQL(self.columns))


PrimaryKeys = Mapping[str, PrimaryKey]


#: The tables whose primary keys the "accounts, transfers and checks" step builds (in load order), and those
#: ``finish`` builds; the entries' is a step of its own.
_KEYED_IN_STEPS: Final = ("parties", "accounts", "transfers", "holds")
_KEYED_IN_FINISH: Final = ("balances", "tracking")


@dataclass(frozen=True)
class Step:
    """Statements of step 3 that run in one transaction of their own, on whichever connection is free, once the
    steps named in ``after`` have committed. Steps that would wait on each other's locks are ordered by ``after``."""

    name: str
    run: Callable[[Conn], None]
    after: tuple[str, ...] = ()


def steps(schema: str, keys: PrimaryKeys) -> list[Step]:
    """Step 3 as steps over the committed staging tables, most work first (the scheduler starts them in this order):

    - the entries (two per transfer, the biggest table), then their primary key's index and other indexes, each
      index a step of its own (index builds of one table share its lock, so they run side by side);
    - the other tables with their primary keys, foreign keys and the small indexes, then step 4's checks; the
      transfers' two indexes are steps of their own.

    What needs the entries and the rest together (the entries' primary key and foreign keys, the balances) is
    ``finish``.
    """
    # Every primary key dropped before the load is built again by a step or by `finish`: a table added to the schema
    # must be added here too.
    assert set(keys) == {*_KEYED_IN_STEPS, "entries", *_KEYED_IN_FINISH}, f"primary keys of {sorted(keys)}"
    # And so is every foreign key and index of the schema (the steps below and `finish` name their tables).
    assert set(schema_ddl.FOREIGN_KEYS) == {"accounts", "transfers", "holds", "entries", "balances"}
    assert {table for table, _ in schema_ddl.INDEXES} == {"accounts", "holds", "entries", "transfers"}
    fragments = _fragments(schema)

    def run(*statements: sql.Composed) -> Callable[[Conn], None]:
        def execute(conn: Conn) -> None:
            for statement in statements:
                conn.execute(statement)
        return execute

    def others(conn: Conn) -> None:
        for name in _KEYED_IN_STEPS:
            conn.execute(_statement(_TABLE_SQL[name], schema, **fragments))
            conn.execute(keys[name].add(schema, name))
        _check(conn, schema)
        for name in ("accounts", "transfers", "holds"):
            conn.execute(schema_ddl.foreign_keys_ddl(schema, name))
        for name, columns in schema_ddl.INDEXES:
            if name in ("accounts", "holds"):
                conn.execute(schema_ddl.index_ddl(schema, name, columns))

    entries_key = keys["entries"]
    built = [
        Step("entries", run(_statement(_TABLE_SQL["entries"], schema, **fragments))),
        Step("accounts, transfers and checks", others),
        Step("entries key", run(sql.SQL("CREATE UNIQUE INDEX {} ON {} {}").format(
            sql.Identifier(entries_key.name), sql.Identifier(schema, "entries"), sql.SQL(entries_key.columns))),
            after=("entries",)),
    ]
    for name, columns in schema_ddl.INDEXES:
        if name in ("entries", "transfers"):
            after = "entries" if name == "entries" else "accounts, transfers and checks"
            built.append(Step(f"{name} by {', '.join(columns)}", run(schema_ddl.index_ddl(schema, name, columns)),
                              after=(after,)))
    return built


def run_steps(connections: Sequence[Conn], planned: Sequence[Step], progress: Stage) -> None:
    """Runs the steps on the connections, each step committed on its own; reports each as it starts.

    The first error stops the others (their statements are cancelled and rolled back) and is raised; whatever the
    steps committed is the caller's to drop.
    """
    waiting, done = list(planned), set[str]()
    idle = list(connections)
    running: dict[Future[None], tuple[Step, Conn]] = {}
    with ThreadPoolExecutor(len(connections), thread_name_prefix="rebuild-step") as pool:
        try:
            while waiting or running:
                while idle and (ready := next((s for s in waiting if done.issuperset(s.after)), None)):
                    waiting.remove(ready)
                    progress(f"tables/{ready.name}", len(done), len(planned))
                    conn = idle.pop()
                    running[pool.submit(_run_step, conn, ready)] = (ready, conn)
                if not running:
                    raise AssertionError(f"rebuild steps wait on each other: {[s.name for s in waiting]}")
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    step, conn = running.pop(future)
                    future.result()
                    done.add(step.name)
                    idle.append(conn)
        except BaseException:
            for _step, conn in running.values():
                conn.cancel_safe()
            wait(running)
            for conn in connections:
                conn.rollback()
            raise
    progress("tables/done", len(planned), len(planned))


def _run_step(conn: Conn, step: Step) -> None:
    step.run(conn)
    conn.commit()


def finish(conn: Conn, schema: str, keys: PrimaryKeys, progress: Stage) -> None:
    """What needs every step's tables: the entries' primary key (its index is built) and foreign keys, the balances
    (each account's latest entry, found through that key) and the last primary keys; then the staging tables go."""
    total = 5  # the caller reports the commit (4) and the end (5)
    progress("constraints/primary key of entries", 0, total)
    entries_key = keys["entries"]
    conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY USING INDEX {}").format(
        sql.Identifier(schema, "entries"), sql.Identifier(entries_key.name), sql.Identifier(entries_key.name)))
    progress("constraints/balances", 1, total)
    conn.execute(_statement(_TABLE_SQL["balances"], schema, **_fragments(schema)))
    for name in _KEYED_IN_FINISH:
        conn.execute(keys[name].add(schema, name))
    progress("constraints/foreign keys", 2, total)
    for name in ("entries", "balances"):
        conn.execute(schema_ddl.foreign_keys_ddl(schema, name))
    conn.execute(_statement("DROP TABLE {s}.{log}, {s}.{transfers}, {s}.{facts}", schema))
    progress("constraints/staging dropped", 3, total)


def _drop_primary_keys(conn: Conn, schema: str) -> dict[str, PrimaryKey]:
    """Drops every primary key of the schema's (bare, empty) tables; returns them by table."""
    rows = conn.execute(
        "SELECT t.relname, c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c "
        "JOIN pg_class t ON t.oid = c.conrelid WHERE c.connamespace = %s::regnamespace AND c.contype = 'p' "
        "ORDER BY t.relname", (schema,)).fetchall()
    keys = {}
    for table, name, definition in rows:
        conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(sql.Identifier(schema, table),
                                                                         sql.Identifier(name)))
        # The definition is the catalog's own rendering (pg_get_constraintdef), quoted as it needs.
        prefix = "PRIMARY KEY "
        assert definition.startswith(prefix), definition
        keys[table] = PrimaryKey(name, definition[len(prefix):])
    return keys


#: The transfers among ``{records}`` (raw log records), each state parsed once (``OFFSET 0`` keeps the parse in its
#: subquery instead of repeating it at every use) into the columns of ``_DECODED_TRANSFER``, with its check.
_TRANSFERS_TEMPLATE: Final = """SELECT l.id, l.originator_id, r.key, r.kind, r.ledger, r.code,
        {debit}, {credit}, r.amount_centavos, (r.requested_amount_centavos #>> '{{}}')::bigint, {pending},
        r.timeout_s, r.reference, {batch}, (r.timestamp->>'_data_')::timestamptz, {debit_after}, {credit_after}, {fits}
    FROM {records} l, LATERAL jsonb_in(convert_from(l.state, 'UTF8')::cstring) AS j(s),
        LATERAL jsonb_to_record(j.s) AS r({fields})
    WHERE l.topic = {transfer_committed}"""


def _decode_transfers(records: sql.Composable) -> sql.Composed:
    versions = [v for (t, v) in STORED_VERSIONS if t == "TransferCommitted"]
    assert len(versions) == 1, f"the decode reads one stored version of TransferCommitted, not {versions}"
    return sql.SQL(_TRANSFERS_TEMPLATE).format(
        records=records, transfer_committed=_TOPICS["transfer_committed"],
        fields=sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(pg_type))
                                  for name, pg_type in _TRANSFER_FIELDS),
        debit=_uuid(sql.SQL("r.debit_account_id")), credit=_uuid(sql.SQL("r.credit_account_id")),
        pending=_uuid(sql.SQL("r.pending_id"), optional=True), batch=_uuid(sql.SQL("r.linked_batch_id"), optional=True),
        debit_after=_post_state("debit"), credit_after=_post_state("credit"), fits=_transfer_fits(versions[0]))


#: Every other record (few, in a ledger that mostly moves money) as jsonb and its check; ``OFFSET 0`` keeps the parse
#: in the subquery, once per record, instead of repeating it in every expression of the check.
_FACTS_TEMPLATE: Final = """CREATE UNLOGGED TABLE {s}.{facts} AS
    SELECT id, aggregate_id, topic, s, fits, CASE WHEN fits THEN {recorded_at} END AS recorded_at
    FROM (SELECT id, aggregate_id, topic, s, {fits} AS fits
          FROM (SELECT id, originator_id AS aggregate_id, topic, convert_from(state, 'UTF8')::jsonb AS s
                FROM {s}.{log} WHERE topic IS DISTINCT FROM {transfer_committed} OFFSET 0) parsed OFFSET 0) f"""
#: The one check over every record: the first that does not fit the contract, and where `until` cuts the log.
_CHECK_RECORDS: Final = """SELECT min(position) FILTER (WHERE NOT fits),
        min(position) FILTER (WHERE fits AND recorded_at > %s), count(*), max(position)
    FROM (SELECT position, fits, recorded_at FROM {s}.{transfers}
          UNION ALL SELECT id, fits, recorded_at FROM {s}.{facts}) r"""


def _decode(conn: Conn, log: NotificationLog, schema: str, until: datetime | None, progress: Stage) -> Built:
    steps = 2
    progress("decode/other records", 0, steps)
    conn.execute(_statement(_FACTS_TEMPLATE, schema, recorded_at=_recorded_at("s"), fits=_fact_fits("s")))
    progress("decode/check", 1, steps)
    row = conn.execute(_statement(_CHECK_RECORDS, schema), (until,)).fetchone()
    assert row is not None
    misfit, cut, events, position = row
    if misfit is not None and (cut is None or misfit < cut):
        _refuse(log, misfit)
    if cut is not None:  # the log is in commit order: the prefix recorded at or before `until` ends before `cut`
        conn.execute(_statement("DELETE FROM {s}.{transfers} WHERE position >= %s", schema), (cut,))
        conn.execute(_statement("DELETE FROM {s}.{facts} WHERE id >= %s", schema), (cut,))
        row = conn.execute(_statement("SELECT count(*), max(position) FROM (SELECT position FROM {s}.{transfers} "
                                      "UNION ALL SELECT id FROM {s}.{facts}) r", schema)).fetchone()
        assert row is not None
        events, position = row
    events, position = int(events), int(position or 0)
    chain_hash = _chain_hash(log, position) if position else GENESIS_CHAIN_HASH
    progress("decode/done", steps, steps)
    return Built(position, chain_hash, events)


def _chain_hash(log: NotificationLog, position: int) -> str:
    chain_hash = chain_hash_at(log, position)
    assert chain_hash is not None, f"log record {position} is gone"
    return chain_hash


def _post_state(side: str) -> sql.Composed:
    """A transfer's four post-state fields of one side, from its ``<side>_after`` array (1-based)."""
    return sql.SQL(", ").join(
        sql.SQL("r.{}[{}] AS {}").format(sql.Identifier(f"{side}_after"), sql.Literal(i + 1),
                                         sql.Identifier(f"{side}_{name}"))
        for i, name in enumerate(_BALANCE_FIELDS))


def _refuse(log: NotificationLog, position: int) -> None:
    """Raises the contract's own error for the log's record at ``position`` (it does not fit the contract)."""
    row = log_record(log, position)
    assert row is not None, f"log record {position} is gone"
    LogDecoder().decode_row(*row)
    raise MalformedEvent(f"log record {position} ({row[3]}) does not fit the contract as the set-based rebuild "
                         "reads it, although LogDecoder accepts it: projections.rebuild_sql needs fixing")


#: The latest end of each pending transfer: its settling transfer (a post or void, which settles it at its own
#: position, as projections.projector does), then its PendingTransferResolved one position later, or its expiry.
_ENDS: Final = """SELECT DISTINCT ON (pending_id) pending_id, position, recorded_at, status, resolved_by FROM (
        SELECT aggregate_id AS pending_id, id AS position, recorded_at,
            CASE WHEN topic = {resolved} THEN s->>'resolution' ELSE 'expired' END AS status,
            CASE WHEN topic = {resolved} THEN {by_transfer} END AS resolved_by
        FROM {s}.{facts} WHERE topic IN ({resolved}, {expired})
        UNION ALL
        SELECT pending_id, position, recorded_at,
            CASE kind WHEN 'post_pending' THEN 'posted' ELSE 'voided' END, transfer_id
        FROM {s}.{transfers} WHERE kind IN ('post_pending', 'void_pending')
    ) ends ORDER BY pending_id, position DESC"""
_EXPIRED: Final = """SELECT id AS position, aggregate_id AS pending_id, recorded_at, 'expired' AS kind,
        {debit} AS debit_account_id, {credit} AS credit_account_id,
        (s->>'amount_centavos')::bigint AS amount_centavos, {debit_after}, {credit_after}
    FROM {s}.{facts} WHERE topic = {expired}"""


_LEG: Final = """SELECT {account}, position, {transfer_id}, kind, {direction}, amount_centavos, {counterparty},
        {debits_pending}, {debits_posted}, {credits_pending}, {credits_posted}, recorded_at FROM ({source}) legs"""


def _legs(source: sql.Composable, transfer_id: str) -> sql.Composed:
    """Both legs of each balance-moving event of ``source``, with each account's post-state."""
    return sql.SQL(" UNION ALL ").join(
        sql.SQL(_LEG).format(account=sql.Identifier(f"{mine}_account_id"), transfer_id=sql.Identifier(transfer_id),
                             direction=sql.Literal(mine), counterparty=sql.Identifier(f"{other}_account_id"),
                             source=source, **{name: sql.Identifier(f"{mine}_{name}") for name in _BALANCE_FIELDS})
        for mine, other in (("debit", "credit"), ("credit", "debit")))


#: Each table's ``INSERT ... SELECT``: it reproduces the rows projections.projector leaves in that table.
_TABLE_SQL: Final[Mapping[str, str]] = dict((
    ("parties", """INSERT INTO {s}.parties (party_id, kind, wallet_id, registered_at, position)
        SELECT aggregate_id, s->>'kind', {wallet}, recorded_at, id FROM {s}.{facts} WHERE topic = {party}"""),
    ("accounts", """INSERT INTO {s}.accounts (account_id, ledger, code, flags, reference, owner_id, debit_normal,
            opened_at, opened_position, closed_at, closed_position)
        SELECT o.aggregate_id, (o.s->>'ledger')::integer, (o.s->>'code')::integer,
            CASE WHEN c.id IS NULL THEN (o.s->>'flags')::integer ELSE (c.s->>'flags')::integer END, o.s->>'reference',
            CASE WHEN coalesce(o.s->'class_version', '1') = '1' THEN NULL ELSE {owner} END,
            (o.s->>'code')::integer = ANY({debit_normal}::integer[]), o.recorded_at, o.id, c.recorded_at, c.id
        FROM {s}.{facts} o LEFT JOIN (
            SELECT DISTINCT ON (aggregate_id) aggregate_id, id, s, recorded_at FROM {s}.{facts}
            WHERE topic = {closed} ORDER BY aggregate_id, id DESC) c ON c.aggregate_id = o.aggregate_id
        WHERE o.topic = {opened}"""),
    ("transfers", """INSERT INTO {s}.transfers (transfer_id, key, kind, ledger, code, debit_account_id,
            credit_account_id, amount_centavos, requested_amount_centavos, pending_id, timeout_s, reference,
            linked_batch_id, status, resolved_by, resolved_at, resolved_position, recorded_at, position)
        SELECT t.transfer_id, t.key, t.kind, t.ledger, t.code, t.debit_account_id, t.credit_account_id,
            t.amount_centavos, t.requested_amount_centavos, t.pending_id, t.timeout_s, t.reference, t.linked_batch_id,
            CASE WHEN e.position IS NULL THEN {status} ELSE e.status END, e.resolved_by, e.recorded_at, e.position,
            t.recorded_at, t.position
        FROM {s}.{transfers} t LEFT JOIN ({ends}) e ON e.pending_id = t.transfer_id"""),
    ("entries", """INSERT INTO {s}.entries (account_id, position, transfer_id, kind, direction, amount_centavos,
            counterparty_account_id, debits_pending, debits_posted, credits_pending, credits_posted, recorded_at)
        {transfer_legs} UNION ALL {expiry_legs}"""),
    # The latest post-state of each account is its latest entry (one per account and position), else the zeros of
    # its opening: one look-up per account in the entries' primary key.
    ("balances", """INSERT INTO {s}.balances (account_id, debits_pending, debits_posted, credits_pending,
            credits_posted, position, changed_at)
        SELECT a.account_id, coalesce(e.debits_pending, 0), coalesce(e.debits_posted, 0),
            coalesce(e.credits_pending, 0), coalesce(e.credits_posted, 0), coalesce(e.position, a.opened_position),
            coalesce(e.recorded_at, a.opened_at)
        FROM {s}.accounts a LEFT JOIN LATERAL (
            SELECT x.debits_pending, x.debits_posted, x.credits_pending, x.credits_posted, x.position, x.recorded_at
            FROM {s}.entries x WHERE x.account_id = a.account_id ORDER BY x.position DESC LIMIT 1) e ON true"""),
    ("holds", """INSERT INTO {s}.holds (transfer_id, debit_account_id, credit_account_id, amount_centavos,
            expires_at, created_at, position)
        SELECT t.transfer_id, t.debit_account_id, t.credit_account_id, t.amount_centavos,
            CASE WHEN t.timeout_s <> 0 THEN t.recorded_at + make_interval(secs => t.timeout_s) END,
            t.recorded_at, t.position
        FROM {s}.{transfers} t WHERE t.kind = 'pending' AND NOT EXISTS (
            SELECT 1 FROM {s}.{facts} e WHERE e.topic IN ({resolved}, {expired})
            AND e.aggregate_id = t.transfer_id)"""),
))
_COMMON: Final[dict[str, sql.Composable]] = {
    "wallet": _uuid(_field("s", "wallet_id")),
    "owner": _uuid(_field("o.s", "owner_id"), optional=True),
    "debit_normal": _array(tuple(int(code) for code in AccountCode if is_debit_normal(code))),
    "status": sql.SQL("CASE t.kind {} END").format(sql.SQL(" ").join(
        sql.SQL("WHEN {} THEN {}").format(sql.Literal(kind), sql.Literal(status))
        for kind, status in STATUS_OF_KIND.items())),
    "by_transfer": _uuid(_field("s", "by_transfer_id")),
    "debit": _uuid(_field("s", "debit_account_id")),
    "credit": _uuid(_field("s", "credit_account_id")),
    "debit_after": _balances("s", "debit"),
    "credit_after": _balances("s", "credit"),
}


def _fragments(schema: str) -> dict[str, sql.Composable]:
    """What the table templates name besides the schema, the scratch tables and the topics."""
    return {
        **_COMMON,
        "ends": _statement(_ENDS, schema, **_COMMON),
        "transfer_legs": _legs(_statement("SELECT * FROM {s}.{transfers}", schema), "transfer_id"),
        "expiry_legs": _legs(_statement(_EXPIRED, schema, **_COMMON), "pending_id"),
    }


#: What the projector's row changes refuse (``ProjectionBug`` of the change buffer and the store, or an assertion
#: of the projector), counted; run once the tables have their primary keys.
_CHECKS: Final = """SELECT
    (SELECT count(*) FROM {s}.{facts} c WHERE c.topic = {closed}
        AND NOT EXISTS (SELECT 1 FROM {s}.accounts a WHERE a.account_id = c.aggregate_id)),
    (SELECT count(*) FROM {s}.{facts} e WHERE e.topic IN ({resolved}, {expired})
        AND NOT EXISTS (SELECT 1 FROM {s}.transfers t WHERE t.transfer_id = e.aggregate_id AND t.kind = 'pending')),
    (SELECT count(*) - count(DISTINCT aggregate_id) FROM {s}.{facts} WHERE topic IN ({resolved}, {expired})),
    (SELECT count(*) FROM {s}.{facts} WHERE topic = {resolved}
        AND s->>'resolution' IS DISTINCT FROM 'posted' AND s->>'resolution' IS DISTINCT FROM 'voided'),
    (SELECT count(*) FROM {s}.{transfers} WHERE kind IS NULL OR kind <> ALL({kinds}::text[]))"""
_CHECK_NAMES: Final = ("closes of an account never opened", "resolutions of a transfer that is not pending",
                       "pending transfers ended more than once", "resolutions neither posted nor voided",
                       "transfers of an unknown kind")


def _check(conn: Conn, schema: str) -> None:
    row = conn.execute(_statement(_CHECKS, schema, kinds=_array(tuple(STATUS_OF_KIND)))).fetchone()
    assert row is not None
    problems = [f"{count} {name}" for count, name in zip(row, _CHECK_NAMES, strict=True) if count]
    if problems:
        raise ProjectionBug("the log's events do not make consistent rows: " + ", ".join(problems))
