"""One deterministic run of the writer, printed as JSON: what ``test_native.py`` compares, compiled and interpreted.

Run as a script in a process of its own (``RAZAO_NATIVE`` decides which code it loads). Everything that could
differ between runs is fixed: the clock, the account ids, the keys. It prints which code ran, the digest of every
stored event (topic, originator, version, the stored bytes), the chain head, the state's fingerprint and every
refusal's code.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime

import ledger
import ledger.model
from ledger import errors
from ledger.application import LedgerApplication, ledger_env
from ledger.chart import REQUIRED_FLAGS, AccountCode
from ledger.command_types import CloseAccount, CreateLinkedTransfers, CreateTransfer, CreateTransfers, OpenAccount
from ledger.inmemory import InMemoryWriterLease, RecorderTransferLookup
from ledger.parties import RegisterParty
from ledger.writer import LedgerWriter

START = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
NAMESPACE = uuid.UUID("4b0f3c1e-9d2a-4f6b-8e7c-1a2b3c4d5e6f")


def account(name: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, name)


def main() -> None:
    app = LedgerApplication(env=ledger_env())
    writer = LedgerWriter(app, InMemoryWriterLease("native-scenario"), RecorderTransferLookup(app.recorder),
                          clock=lambda: START, wait_ms=0.0, checkpoint_interval=10**9).start()
    outcomes: list[str] = []

    def attempt(command: object) -> None:
        try:
            result = writer.submit(command).result(timeout=30)  # type: ignore[arg-type]
        except errors.LedgerError as exc:
            outcomes.append(exc.code)
            return
        if isinstance(result, list):
            outcomes.append(",".join(r.code if isinstance(r, errors.LedgerError) else "ok" for r in result))
        else:
            outcomes.append("replayed" if getattr(result, "replayed", False) else "ok")

    settlement, suspense = account("settlement"), account("suspense")
    wallets = [account(f"wallet-{n}") for n in range(6)]
    attempt(OpenAccount(settlement, AccountCode.PIX_SETTLEMENT, REQUIRED_FLAGS[AccountCode.PIX_SETTLEMENT]))
    attempt(OpenAccount(suspense, AccountCode.SUSPENSE, REQUIRED_FLAGS[AccountCode.SUSPENSE]))
    for wallet in wallets:
        attempt(OpenAccount(wallet, AccountCode.INVESTOR_WALLET, REQUIRED_FLAGS[AccountCode.INVESTOR_WALLET],
                            reference="ção"))
    attempt(RegisterParty("party-1", "investor", "Maria da Silva", "52998224725", "maria@example.com.br",
                          "+5511987654321"))
    for n, wallet in enumerate(wallets):
        attempt(CreateTransfer(f"deposit-{n}", settlement, wallet, 10_000 * (n + 1), code=10, reference=f"e2e-{n}"))
    attempt(CreateTransfer("pay", wallets[0], wallets[1], 2_500))
    attempt(CreateTransfer("pay", wallets[0], wallets[1], 2_500))  # the same again: replayed
    attempt(CreateTransfer("pay", wallets[0], wallets[1], 2_501))  # the same key, another payload: refused
    attempt(CreateTransfer("overdraft", wallets[0], wallets[2], 1_000_000))
    hold_1 = CreateTransfer("hold-1", wallets[3], wallets[4], 7_000, kind="pending", timeout_s=3_600)
    attempt(hold_1)
    attempt(CreateTransfer("post-1", None, None, 3_000, kind="post_pending", pending_id=hold_1.transfer_id))
    hold_2 = CreateTransfer("hold-2", wallets[2], wallets[5], 1_000, kind="pending")
    attempt(hold_2)
    attempt(CreateTransfer("void-2", None, None, None, kind="void_pending", pending_id=hold_2.transfer_id))
    attempt(CreateTransfer("post-void", None, None, None, kind="post_pending", pending_id=hold_2.transfer_id))
    attempt(CreateLinkedTransfers((CreateTransfer("l1", wallets[5], wallets[0], 100),
                                   CreateTransfer("l2", wallets[0], suspense, 100))))
    attempt(CreateLinkedTransfers((CreateTransfer("l3", wallets[5], wallets[0], 100),
                                   CreateTransfer("l4", wallets[1], wallets[2], 10**9))))  # fails as a whole
    many = [CreateTransfer(f"many-{n}", wallets[n % 6], wallets[(n + 1) % 6], 10 + n) for n in range(12)]
    attempt(CreateTransfers((*many, CreateTransfer("many-bad", wallets[0], wallets[0], 5))))
    attempt(CloseAccount(wallets[5]))  # not empty: refused
    state = writer.state
    writer.stop()
    digest = hashlib.sha256()
    count = 0
    for record in app.recorder.select_notifications(1, limit=100_000):
        digest.update(f"{record.topic}|{record.originator_id}|{record.originator_version}|".encode())
        digest.update(record.state)
        count += 1
    print(json.dumps({
        "compiled": ledger.NATIVE.active,
        "model_file": str(ledger.model.__file__).rsplit("/", 1)[-1],
        "events": count,
        "stored_digest": digest.hexdigest(),
        "chain_head": state.chain_hash,
        "fingerprint": str(state.fingerprint()),
        "outcomes": outcomes,
    }))


if __name__ == "__main__":
    main()
