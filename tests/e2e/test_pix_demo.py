"""`razao demo` with PIX on: a deposit paid through the sandbox PSP and a withdrawal to a Pix key, in the story."""

from __future__ import annotations

import os

from tests.conftest import RunRazao
from tests.e2e.pix_support import PixPlatform, pix

__all__ = ["pix"]


def test_the_demo_deposits_and_withdraws_through_the_sandbox(pix: PixPlatform, razao: RunRazao) -> None:
    env = {**os.environ, "RAZAO_STATE_DIR": str(pix.api.state_dir), "RAZAO_ENV": "development",
           "RAZAO_SANDBOX_PSP_PRIMARY_ADMIN_PORT": str(pix.primary.admin_port),
           "RAZAO_SANDBOX_PSP_SECONDARY_ADMIN_PORT": str(pix.secondary.admin_port)}
    output = razao("demo", "--url", pix.api.url, env=env).stdout
    assert "POST /v1/deposits" in output and "/_sandbox/pay" in output
    assert "← PAID by E30000003" in output and "credited to Ana's wallet" in output
    assert "POST /v1/withdrawals" in output and "← COMPLETED at the primary PSP" in output
    table = output[output.index("account "):]
    rows = {line.split()[0]: line.split() for line in table.splitlines()[2:] if line.strip() and "Σ" not in line}
    assert rows["Ana"][-1] == "1029.50"  # 729.50 as before, + 500.00 deposited by PIX - 200.00 withdrawn
    assert "the ledger balances" in output
