"""A ledger writer process to be killed with SIGKILL by ``tests/integration/test_ledger_crash.py``.

Usage: ``python crash_writer.py DSN [THREADS]``. Opens a settlement account and one wallet per thread (ids derived
from their names, so a restart can find them), prints ``READY``, then every thread submits transfers in a loop:
deposits, wallet-to-wallet payments (some refused), holds and their posts or voids. Each acknowledged transfer is
printed as one JSON line, flushed, as soon as its result arrived: the command and the position it was given. The
test replays every printed command after the crash and expects the same position back.
"""

from __future__ import annotations

import json
import sys
import threading
import uuid
from typing import Any

from commands.bootstrap import build_ledger
from ledger import errors
from ledger.chart import REQUIRED_FLAGS, AccountCode
from ledger.command_types import transfer_id_for_key
from ledger.model import CreateTransfer, OpenAccount

NAMESPACE = uuid.UUID("c7a2b0e4-5d1f-4e3a-9b6c-0f8e7d6c5b4a")
CHECKPOINT_INTERVAL = 150


def account_id(name: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, name)


def command_to_json(command: CreateTransfer) -> dict[str, Any]:
    return {
        "key": command.key,
        "debit_account_id": str(command.debit_account_id) if command.debit_account_id else None,
        "credit_account_id": str(command.credit_account_id) if command.credit_account_id else None,
        "amount_centavos": command.amount_centavos,
        "kind": command.kind,
        "pending_id": str(command.pending_id) if command.pending_id else None,
        "timeout_s": command.timeout_s,
        "code": command.code,
    }


def main() -> None:
    dsn = sys.argv[1]
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 6
    runtime = build_ledger(dsn, wait_ms=1.0, checkpoint_interval=CHECKPOINT_INTERVAL)
    writer = runtime.writer
    settlement = account_id("settlement")
    wallets = [account_id(f"wallet-{n}") for n in range(threads)]
    writer.open_account(OpenAccount(settlement, AccountCode.PIX_SETTLEMENT, REQUIRED_FLAGS[AccountCode.PIX_SETTLEMENT]))
    for wallet in wallets:
        flags = REQUIRED_FLAGS[AccountCode.INVESTOR_WALLET]
        writer.open_account(OpenAccount(wallet, AccountCode.INVESTOR_WALLET, flags))
    out = threading.Lock()

    def acknowledge(command: CreateTransfer, position: int) -> None:
        line = json.dumps({"command": command_to_json(command), "position": position}) + "\n"
        with out:  # one write per line, flushed at once: the line is out before the next result is awaited
            sys.stdout.write(line)
            sys.stdout.flush()

    def loop(n: int) -> None:
        me, other = wallets[n], wallets[(n + 1) % threads]
        i = 0
        while True:
            step = i % 5
            key = f"w{n}-{i}"
            if step == 0:
                command = CreateTransfer(key, settlement, me, 1_000 + i % 97, code=10)
            elif step == 1:
                command = CreateTransfer(key, me, other, 700 + i % 13)  # sometimes more than is there
            elif step == 2:
                command = CreateTransfer(key, me, settlement, 300, kind="pending", timeout_s=3_600)
            elif step == 3:
                hold = transfer_id_for_key(f"w{n}-{i - 1}")
                kind = "post_pending" if i % 2 else "void_pending"
                command = CreateTransfer(key, None, None, None, kind=kind, pending_id=hold)
            else:
                command = CreateTransfer(key, me, settlement, 50, code=11)
            try:
                result = writer.transfer(command)
            except errors.LedgerError:
                pass  # refused (or unknown outcome): not acknowledged, not printed
            else:
                acknowledge(command, result.position)
            i += 1

    sys.stdout.write("READY\n")
    sys.stdout.flush()
    for n in range(threads):
        threading.Thread(target=loop, args=(n,), daemon=True).start()
    threading.Event().wait()  # until killed


if __name__ == "__main__":
    main()
