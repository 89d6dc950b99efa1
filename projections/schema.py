"""The read models' tables: one Postgres schema per copy of the model (``live``, or a rebuild's own schema).

Tables hold only what the events say (balances as the four TigerBeetle fields, post-state of each statement entry),
so a projector never reads back; signed amounts (posted, pending, available) are derived in queries from the
account's normal side. Foreign keys are ``DEFERRABLE INITIALLY DEFERRED``: a batch's rows may arrive in any order
and are checked at commit. A rebuild loads the tables bare (primary keys only) and adds indexes and foreign keys at
the end, which validates every reference once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from psycopg import Connection, sql

#: The schema the projector keeps up to date and the query API reads.
LIVE_SCHEMA = "live"
#: Where `razao projections rebuild` writes unless told otherwise.
REBUILD_SCHEMA = "rebuild"
#: The name of the one projection of the ledger (its row in ``tracking``).
PROJECTION = "ledger"
_SCHEMA_NAME = re.compile(r"\A[a-z_][a-z0-9_]{0,62}\Z")


@dataclass(frozen=True)
class Table:
    """A read-model table: its columns in row order; the first ``key_columns`` form the primary key."""

    name: str
    columns: tuple[str, ...]
    key_columns: int = 1
    #: Rows are only ever inserted (never updated or deleted), so a buffer need not index them by key.
    append_only: bool = False

    @property
    def key(self) -> tuple[str, ...]:
        return self.columns[: self.key_columns]


PARTIES = Table("parties", ("party_id", "kind", "wallet_id", "registered_at", "position"))
ACCOUNTS = Table("accounts", ("account_id", "ledger", "code", "flags", "reference", "owner_id", "debit_normal",
                              "opened_at", "opened_position", "closed_at", "closed_position"))
BALANCES = Table("balances", ("account_id", "debits_pending", "debits_posted", "credits_pending", "credits_posted",
                              "position", "changed_at"))
TRANSFERS = Table("transfers", ("transfer_id", "key", "kind", "ledger", "code", "debit_account_id",
                                "credit_account_id", "amount_centavos", "requested_amount_centavos", "pending_id",
                                "timeout_s", "reference", "linked_batch_id", "status", "resolved_by", "resolved_at",
                                "resolved_position", "recorded_at", "position"))
ENTRIES = Table("entries", ("account_id", "position", "transfer_id", "kind", "direction", "amount_centavos",
                            "counterparty_account_id", "debits_pending", "debits_posted", "credits_pending",
                            "credits_posted", "recorded_at"), key_columns=2, append_only=True)
HOLDS = Table("holds", ("transfer_id", "debit_account_id", "credit_account_id", "amount_centavos", "expires_at",
                        "created_at", "position"))

#: In dependency order (parents first); checksums and rebuild loads use this order.
TABLES: tuple[Table, ...] = (PARTIES, ACCOUNTS, BALANCES, TRANSFERS, ENTRIES, HOLDS)
TABLES_BY_NAME = {t.name: t for t in TABLES}

_TABLES_DDL = """
CREATE TABLE {s}.parties (
    party_id uuid PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('investor', 'borrower')),
    wallet_id uuid NOT NULL,
    registered_at timestamptz NOT NULL,
    position bigint NOT NULL
);
CREATE TABLE {s}.accounts (
    account_id uuid PRIMARY KEY,
    ledger integer NOT NULL,
    code integer NOT NULL,
    flags integer NOT NULL,
    reference text NOT NULL,
    owner_id uuid,
    debit_normal boolean NOT NULL,
    opened_at timestamptz NOT NULL,
    opened_position bigint NOT NULL,
    closed_at timestamptz,
    closed_position bigint
);
CREATE TABLE {s}.balances (
    account_id uuid PRIMARY KEY,
    debits_pending bigint NOT NULL CHECK (debits_pending >= 0),
    debits_posted bigint NOT NULL CHECK (debits_posted >= 0),
    credits_pending bigint NOT NULL CHECK (credits_pending >= 0),
    credits_posted bigint NOT NULL CHECK (credits_posted >= 0),
    position bigint NOT NULL,
    changed_at timestamptz NOT NULL
);
CREATE TABLE {s}.transfers (
    transfer_id uuid PRIMARY KEY,
    key text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('single', 'pending', 'post_pending', 'void_pending')),
    ledger integer NOT NULL,
    code integer NOT NULL,
    debit_account_id uuid NOT NULL,
    credit_account_id uuid NOT NULL,
    amount_centavos bigint NOT NULL CHECK (amount_centavos >= 0),
    requested_amount_centavos bigint,
    pending_id uuid,
    timeout_s integer NOT NULL,
    reference text NOT NULL,
    linked_batch_id uuid,
    status text NOT NULL CHECK (status IN ('posted', 'pending', 'voided', 'expired')),
    resolved_by uuid,
    resolved_at timestamptz,
    resolved_position bigint,
    recorded_at timestamptz NOT NULL,
    position bigint NOT NULL
);
CREATE TABLE {s}.entries (
    account_id uuid NOT NULL,
    position bigint NOT NULL,
    transfer_id uuid NOT NULL,
    kind text NOT NULL CHECK (kind IN ('single', 'pending', 'post_pending', 'void_pending', 'expired')),
    direction text NOT NULL CHECK (direction IN ('debit', 'credit')),
    amount_centavos bigint NOT NULL,
    counterparty_account_id uuid NOT NULL,
    debits_pending bigint NOT NULL,
    debits_posted bigint NOT NULL,
    credits_pending bigint NOT NULL,
    credits_posted bigint NOT NULL,
    recorded_at timestamptz NOT NULL,
    PRIMARY KEY (account_id, position)
);
CREATE TABLE {s}.holds (
    transfer_id uuid PRIMARY KEY,
    debit_account_id uuid NOT NULL,
    credit_account_id uuid NOT NULL,
    amount_centavos bigint NOT NULL,
    expires_at timestamptz,
    created_at timestamptz NOT NULL,
    position bigint NOT NULL
);
CREATE TABLE {s}.tracking (
    projection text PRIMARY KEY,
    position bigint NOT NULL,
    chain_hash text NOT NULL,
    events_applied bigint NOT NULL,
    halted_reason text,
    halted_position bigint,
    updated_at timestamptz NOT NULL DEFAULT now()
);
"""

#: Each table's foreign keys: (column, referenced table), checked against the referenced table's primary key.
FOREIGN_KEYS: dict[str, tuple[tuple[str, str], ...]] = {
    "accounts": (("owner_id", "parties"),),
    "balances": (("account_id", "accounts"),),
    "transfers": (("debit_account_id", "accounts"), ("credit_account_id", "accounts"), ("pending_id", "transfers")),
    "entries": (("account_id", "accounts"), ("counterparty_account_id", "accounts"), ("transfer_id", "transfers")),
    "holds": (("transfer_id", "transfers"), ("debit_account_id", "accounts"), ("credit_account_id", "accounts")),
}
#: The indexes besides the primary keys: (table, columns), named by Postgres from them.
INDEXES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("accounts", ("owner_id",)),
    ("entries", ("account_id", "recorded_at", "position")),
    ("entries", ("position",)),
    ("transfers", ("debit_account_id", "position")),
    ("transfers", ("credit_account_id", "position")),
    ("holds", ("debit_account_id",)),
    ("holds", ("credit_account_id",)),
)


def foreign_keys_ddl(schema: str, table: str) -> sql.Composed:
    """``ALTER TABLE`` adding every foreign key of ``table`` (one statement: one lock, each key validated once)."""
    return sql.SQL("ALTER TABLE {} {}").format(sql.Identifier(schema, table), sql.SQL(", ").join(
        sql.SQL("ADD FOREIGN KEY ({}) REFERENCES {} DEFERRABLE INITIALLY DEFERRED").format(
            sql.Identifier(column), sql.Identifier(schema, parent))
        for column, parent in FOREIGN_KEYS[table]))


def index_ddl(schema: str, table: str, columns: tuple[str, ...]) -> sql.Composed:
    return sql.SQL("CREATE INDEX ON {} ({})").format(sql.Identifier(schema, table),
                                                     sql.SQL(", ").join(map(sql.Identifier, columns)))


def check_schema_name(name: str) -> str:
    """Schema names come from the command line: only plain lower-case identifiers, never ``public``."""
    if not _SCHEMA_NAME.match(name) or name in ("public", "information_schema") or name.startswith("pg_"):
        raise ValueError(f"{name!r} is not a usable schema name (lower-case letters, digits and _)")
    return name


def _run(conn: Connection[tuple[object, ...]], ddl: str, schema: str) -> None:
    # The schema name was checked by check_schema_name; Identifier quotes it anyway.
    conn.execute(sql.SQL(ddl.replace("{s}", "{0}")).format(sql.Identifier(schema)))  # type: ignore[arg-type]


def schema_exists(conn: Connection[tuple[object, ...]], schema: str) -> bool:
    row = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
    return row is not None


def create_schema(conn: Connection[tuple[object, ...]], schema: str, *, constraints: bool = True,
                  replace: bool = False) -> None:
    """Creates the schema's tables (and, unless ``constraints=False``, its foreign keys and indexes).

    With ``replace``, an existing schema of that name is dropped first. Runs in the caller's transaction.
    """
    check_schema_name(schema)
    if replace:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    _run(conn, _TABLES_DDL, schema)
    if constraints:
        add_constraints(conn, schema)


def add_constraints(conn: Connection[tuple[object, ...]], schema: str) -> None:
    """The foreign keys, then the indexes, of every table of ``schema``."""
    for table in FOREIGN_KEYS:
        conn.execute(foreign_keys_ddl(schema, table))
    for table, columns in INDEXES:
        conn.execute(index_ddl(schema, table, columns))


def ensure_schema(conn: Connection[tuple[object, ...]], schema: str) -> None:
    """Creates the schema with everything unless it exists (serialised by an advisory lock across processes)."""
    check_schema_name(schema)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"razao-read-schema:{schema}",))
        if not schema_exists(conn, schema):
            create_schema(conn, schema)


def notify_channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel on which a projector announces each committed position of ``schema``."""
    return f"razao_read_{check_schema_name(schema)}"
