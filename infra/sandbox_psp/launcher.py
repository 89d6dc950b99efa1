"""Start a sandbox PSP as a child process and drive it (tests, demos): ``start_sandbox(...)`` → ``RunningSandbox``.

The child is stopped by its own PID (``RunningSandbox.stop``), never by name.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from infra.processes import free_port

READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0


class SandboxStartError(RuntimeError):
    """The sandbox did not become ready; the message carries its output."""


@dataclass
class RunningSandbox:
    """A sandbox PSP child process and its addresses. ``admin_url`` stays reachable during a ``refuse`` outage."""

    process: subprocess.Popen[bytes]
    psp_id: str
    port: int
    admin_port: int
    pix_key: str
    ispb: str
    client_id: str
    client_secret: str = field(repr=False)
    webhook_secret: str = field(repr=False)
    log_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def _admin(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        response = httpx.request(method, f"{self.admin_url}/_sandbox/{path}", json=body, timeout=10.0)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} /_sandbox/{path}: {response.status_code} {response.text}")
        return response.json()

    def configure(self, **knobs: Any) -> dict[str, Any]:
        """``POST /_sandbox/config``; returns the knobs now in force."""
        return dict(self._admin("POST", "config", knobs)["knobs"])

    def pay(self, **body: Any) -> dict[str, Any]:
        """``POST /_sandbox/pay``; returns the received Pix."""
        return dict(self._admin("POST", "pay", body))

    def reset(self, seed: int | None = None) -> None:
        self._admin("POST", "reset", {} if seed is None else {"seed": seed})

    def requests(self) -> list[dict[str, Any]]:
        return list(self._admin("GET", "requests"))

    def deliveries(self) -> list[dict[str, Any]]:
        return list(self._admin("GET", "deliveries"))

    def state(self) -> dict[str, Any]:
        return dict(self._admin("GET", "state"))

    def token(self) -> str:
        response = httpx.post(f"{self.base_url}/oauth/token", data={"grant_type": "client_credentials"},
                              auth=(self.client_id, self.client_secret), timeout=10.0)
        response.raise_for_status()
        return str(response.json()["access_token"])

    def stop(self) -> None:
        """SIGTERM to our child's PID, then SIGKILL if it lingers."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT_S)


def start_sandbox(psp_id: str = "primary", *, port: int = 0, admin_port: int = 0, ispb: str = "10000001",
                  pix_key: str = "5f8e0c1a-3b7d-4e2f-9a6c-1d2e3f4a5b6c", client_id: str = "razao",
                  client_secret: str = "sandbox-client-secret",  # noqa: S107 - development value
                  webhook_secret: str = "sandbox-webhook-secret",  # noqa: S107 - development value
                  seed: int | None = None, args: Sequence[str] = (), env: Mapping[str, str] | None = None,
                  log_path: Path | None = None, ready_timeout_s: float = READY_TIMEOUT_S) -> RunningSandbox:
    """Starts ``python -m infra.sandbox_psp`` on the given (or free) ports and waits until it answers."""
    port = port or free_port("127.0.0.1")
    admin_port = admin_port or free_port("127.0.0.1")
    argv = [sys.executable, "-m", "infra.sandbox_psp", "--psp-id", psp_id, "--port", str(port),
            "--admin-port", str(admin_port), "--ispb", ispb, "--pix-key", pix_key, "--client-id", client_id,
            *(["--seed", str(seed)] if seed is not None else []), *args]
    child_env = {**os.environ, **(env or {}), "RAZAO_SANDBOX_PSP_CLIENT_SECRET": client_secret,
                 "RAZAO_SANDBOX_PSP_WEBHOOK_SECRET": webhook_secret}
    output = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL
    try:
        process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT, env=child_env)
    finally:
        if log_path is not None and not isinstance(output, int):
            output.close()
    sandbox = RunningSandbox(process, psp_id, port, admin_port, pix_key, ispb, client_id, client_secret,
                             webhook_secret, log_path)
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SandboxStartError(f"sandbox {psp_id} exited with {process.returncode}; see {log_path}")
        try:
            if httpx.get(f"{sandbox.admin_url}/_sandbox/health", timeout=1.0).status_code == 200:
                return sandbox
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    sandbox.stop()
    raise SandboxStartError(f"sandbox {psp_id} not ready within {ready_timeout_s}s; see {log_path}")
