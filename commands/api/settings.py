"""Settings of the command API (pydantic-settings, ``RAZAO_*`` variables), and the refusal to run unsafely.

Server addresses (Postgres, Redis) and the state directory come from ``infra.settings`` through
``bootstrap.py``; this module holds what only the API needs: the environment, JWT keys and rate limits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import limits
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEVELOPMENT = "development"
DEV_KEYS_DIRNAME = "jwt"
DEV_PRIVATE_KEY_FILENAME = "ed25519-private.pem"
DEV_PUBLIC_KEY_FILENAME = "ed25519-public.pem"


class ApiSettings(BaseSettings):
    """Every knob of the API. Defaults are for a developer's machine (``RAZAO_ENV=development``)."""

    model_config = SettingsConfigDict(env_prefix="RAZAO_", extra="ignore", frozen=True)

    env: str = DEVELOPMENT
    pg_dsn: str = ""
    redis_url: str = ""
    state_dir: Path = Path(".state")

    # JWT: EdDSA (Ed25519) public key to verify; the private key only mints (``razao auth token``, the demo).
    jwt_public_key_file: Path | None = None
    jwt_private_key_file: Path | None = None
    #: HS256 shared secret: accepted only in development (for tools that cannot hold an Ed25519 key).
    jwt_hs256_secret: SecretStr | None = None

    # Rate limits, in the `limits` notation ("100/second", "30/minute"), moving window.
    # Customers are investors and borrowers; internal principals are operators, services, auditors and PSPs.
    api_rate_limit_customer: str = "300/minute"
    api_rate_limit_customer_money: str = "60/minute"
    api_rate_limit_internal: str = "3000/second"
    api_rate_limit_internal_money: str = "3000/second"
    #: Per client address, whoever the principal is (also counts requests with a bad or missing token).
    api_rate_limit_address: str = "1000/second"
    api_rate_limit_address_money: str = "500/second"
    api_rate_limit_key_prefix: str = Field(default="razao-api", pattern=r"^[A-Za-z0-9:_-]{1,64}$")

    # PIX (ADR 0009). Off unless enabled: PIX needs PSPs (``RAZAO_PSP_*``, the sandboxes of `razao up` by default),
    # and an API without them must not claim webhook routes. `razao up` enables it.
    pix_enabled: bool = False
    #: Where PSPs post webhooks, ``{psp}`` standing for the PSP's name (they append ``/pix``). Empty: the server's
    #: own address (``http://<host>:<port>/v1/webhooks/psp/{psp}``); behind a proxy, the proxy's public URL.
    pix_webhook_url: str = ""
    #: Lifetime of a deposit's charge (``calendario.expiracao``) unless the request names one.
    pix_deposit_expiry_s: int = Field(default=3600, ge=60, le=30 * 24 * 3600)
    #: Threads confirming received Pix with their PSP, and following payouts.
    pix_confirm_workers: int = Field(default=16, ge=1, le=64)
    pix_payout_workers: int = Field(default=8, ge=1, le=32)
    #: Backoff cap between two looks at a withdrawal or devolução whose outcome is not final yet.
    pix_payout_delay_s_max: float = Field(default=30.0, ge=0.2, le=30.0)
    #: The inbox processor looks for due rows at least this often (it is also woken by every webhook).
    pix_inbox_sweep_s: float = Field(default=1.0, gt=0, le=60)
    #: Periodic reconciliation: every interval (0 = off), over the window ending lag seconds ago.
    pix_reconcile_interval_s: float = Field(default=300.0, ge=0, le=86_400)
    pix_reconcile_window_s: float = Field(default=7200.0, gt=0, le=31 * 86_400)
    pix_reconcile_lag_s: float = Field(default=30.0, ge=0, le=86_400)

    @field_validator(
        "api_rate_limit_customer", "api_rate_limit_customer_money", "api_rate_limit_internal",
        "api_rate_limit_internal_money", "api_rate_limit_address", "api_rate_limit_address_money",
    )
    @classmethod
    def _parse_limit(cls, value: str) -> str:
        limits.parse(value)  # raises ValueError on a malformed limit, so a typo stops the start
        return value

    @property
    def is_development(self) -> bool:
        return self.env == DEVELOPMENT

    @property
    def dev_keys_dir(self) -> Path:
        return self.state_dir / DEV_KEYS_DIRNAME

    def public_key_path(self) -> Path:
        return self.jwt_public_key_file or self.dev_keys_dir / DEV_PUBLIC_KEY_FILENAME

    def private_key_path(self) -> Path:
        return self.jwt_private_key_file or self.dev_keys_dir / DEV_PRIVATE_KEY_FILENAME

    def hs256_secret(self) -> bytes | None:
        return self.jwt_hs256_secret.get_secret_value().encode() if self.jwt_hs256_secret else None

    def unsafe_reasons(self) -> list[str]:
        """Why this configuration must not serve outside development (empty when it may)."""
        if self.is_development:
            return []
        reasons = []
        if self.jwt_public_key_file is None:
            reasons.append("RAZAO_JWT_PUBLIC_KEY_FILE is not set (development keys are for development only)")
        elif _inside(self.jwt_public_key_file, self.dev_keys_dir):
            reasons.append(f"RAZAO_JWT_PUBLIC_KEY_FILE points at the development keys in {self.dev_keys_dir}")
        if self.jwt_hs256_secret is not None:
            reasons.append("RAZAO_JWT_HS256_SECRET is set: HS256 is accepted in development only")
        return reasons


def _inside(path: Path, directory: Path) -> bool:
    try:
        path.resolve().relative_to(directory.resolve())
    except ValueError:
        return False
    return True


class UnsafeConfiguration(RuntimeError):
    """The API refuses to start: development credentials outside development."""


def rate_limit_scope(kind: Literal["customer", "internal", "address"], money: bool) -> str:
    return f"api_rate_limit_{kind}{'_money' if money else ''}"
