"""The two sandbox PSPs that ``razao up`` starts (entry point ``razao.services`` → ``services``), and their profiles,
which ``infra.pix_gateway`` also reads so that the platform finds them without configuration.

Ports and secrets are development values. ``RAZAO_SANDBOX_PSP_<NAME>_PORT`` and ``..._ADMIN_PORT`` (NAME is
PRIMARY or SECONDARY) move a sandbox; the gateway follows.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Final

from infra.platform import ServiceSpec
from infra.settings import Settings


@dataclass(frozen=True)
class SandboxProfile:
    """One sandbox PSP as the platform sees it."""

    name: str
    port: int
    admin_port: int
    ispb: str
    pix_key: str
    client_id: str
    client_secret: str
    webhook_secret: str
    host: str = "127.0.0.1"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.host}:{self.admin_port}"

    def argv(self) -> tuple[str, ...]:
        return (
            sys.executable, "-m", "infra.sandbox_psp",
            "--psp-id", self.name, "--host", self.host, "--port", str(self.port),
            "--admin-port", str(self.admin_port), "--ispb", self.ispb, "--pix-key", self.pix_key,
            "--client-id", self.client_id,
        )

    def env(self) -> dict[str, str]:
        """Secrets travel in the environment, not in argv where `ps` shows them."""
        return {"RAZAO_SANDBOX_PSP_CLIENT_SECRET": self.client_secret,
                "RAZAO_SANDBOX_PSP_WEBHOOK_SECRET": self.webhook_secret}


PRIMARY: Final = SandboxProfile(
    name="primary", port=8701, admin_port=8711, ispb="10000001",
    pix_key="5f8e0c1a-3b7d-4e2f-9a6c-1d2e3f4a5b6c", client_id="razao",
    client_secret="sandbox-primary-client-secret",  # noqa: S106 - development value
    webhook_secret="sandbox-primary-webhook-secret",  # noqa: S106 - development value
)
SECONDARY: Final = SandboxProfile(
    name="secondary", port=8702, admin_port=8712, ispb="20000002",
    pix_key="0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9", client_id="razao",
    client_secret="sandbox-secondary-client-secret",  # noqa: S106 - development value
    webhook_secret="sandbox-secondary-webhook-secret",  # noqa: S106 - development value
)


def profiles(environ: Mapping[str, str] | None = None) -> tuple[SandboxProfile, SandboxProfile]:
    """PRIMARY and SECONDARY with the port overrides of the environment applied."""
    env = os.environ if environ is None else environ
    resolved = []
    for profile in (PRIMARY, SECONDARY):
        prefix = f"RAZAO_SANDBOX_PSP_{profile.name.upper()}_"
        port = int(env.get(prefix + "PORT") or profile.port)
        admin_port = int(env.get(prefix + "ADMIN_PORT") or profile.admin_port)
        resolved.append(replace(profile, port=port, admin_port=admin_port))
    return resolved[0], resolved[1]


def services(settings: Settings) -> list[ServiceSpec]:
    """``razao up``: a primary and a secondary sandbox PSP, each on its own API and admin ports."""
    del settings  # the sandboxes keep their state in memory and use no backing server
    return [
        ServiceSpec(
            name=f"sandbox_psp_{profile.name}",
            argv=profile.argv(),
            env=profile.env(),
            health_url=f"{profile.admin_url}/_sandbox/health",
            ready_timeout_s=20.0,
        )
        for profile in profiles()
    ]
