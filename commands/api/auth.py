"""Authentication: JWT bearer tokens (PyJWT), EdDSA by default, verified once and then cached.

Accepted: ``alg`` EdDSA with the configured Ed25519 public key, or HS256 with the development secret when one
is configured (development only; refused at start elsewhere). The key is chosen by the algorithm the token
names *before* verifying, and each key is used with its own algorithm only, so neither ``alg: none`` nor an
HS256 token "signed" with the public key (algorithm confusion) can pass.

Required claims: ``sub``, ``role``, ``aud`` (``razao-api``), ``iss`` (``razao-auth``), ``exp``, ``iat``;
``nbf`` and ``iat`` may not lie in the future beyond a small leeway. Customers (investor, borrower) are
identified by their party id, so their ``sub`` must be a UUID in canonical form.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from commands.api.limits import SUBJECT_LENGTH_MAX, TOKEN_CACHE_ENTRIES_MAX, TOKEN_LEEWAY_S, TOKEN_LENGTH_MAX
from commands.api.settings import DEV_PRIVATE_KEY_FILENAME, DEV_PUBLIC_KEY_FILENAME, ApiSettings, UnsafeConfiguration
from infra.bearer_tokens import (  # noqa: F401 - AUDIENCE, ISSUER, REQUIRED_CLAIMS, bearer_token: this API's names too
    AUDIENCE,
    CUSTOMER_ROLES,
    ISSUER,
    REQUIRED_CLAIMS,
    TokenRejected,
    VerifiedTokens,
    bearer_token,
    decode_claims,
    subject_and_role,
    token_algorithm,
)

#: Staff and internal callers. Auditors read only; PSPs only call webhooks (not served here).
INTERNAL_ROLES: Final = frozenset({"operator", "service", "auditor", "psp"})
ROLES: Final = CUSTOMER_ROLES | INTERNAL_ROLES
#: No colon: the subject prefixes idempotency keys as ``sub:key``, so it must never contain the separator.
SUBJECT_PATTERN: Final = re.compile(rf"\A[A-Za-z0-9._@-]{{1,{SUBJECT_LENGTH_MAX}}}\Z")
TOKEN_TTL_S_DEFAULT: Final = 3600

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: ``sub`` (a party id for customers) and one role."""

    sub: str
    role: str

    @property
    def is_customer(self) -> bool:
        return self.role in CUSTOMER_ROLES

    @property
    def party_id(self) -> uuid.UUID:
        assert self.is_customer, "only customers are parties"
        return uuid.UUID(self.sub)


class TokenVerifier:
    """Verifies bearer tokens (``infra.bearer_tokens``); keeps verified ones in a bounded LRU keyed by the token,
    honouring ``exp``."""

    def __init__(
        self, public_key: Ed25519PublicKey, hs256_secret: bytes | None = None, *, clock: Clock = time.time,
        cache_entries_max: int = TOKEN_CACHE_ENTRIES_MAX, leeway_s: int = TOKEN_LEEWAY_S,
    ) -> None:
        self.public_key = public_key
        self.hs256_secret = hs256_secret
        self.clock = clock
        self.leeway_s = leeway_s
        self._verified: VerifiedTokens[Principal] = VerifiedTokens(cache_entries_max, leeway_s)

    @property
    def hits(self) -> int:
        return self._verified.hits

    @property
    def misses(self) -> int:
        return self._verified.misses

    @property
    def cached_tokens(self) -> int:
        return len(self._verified)

    def verify(self, token: str) -> Principal:
        """The principal of a valid token; raises ``TokenRejected`` otherwise."""
        now = self.clock()
        principal = self._verified.get(token, now)
        if principal is None:
            claims = decode_claims(token, *self._key_for(token), leeway_s=self.leeway_s)
            principal = check_claims(claims)
            self._verified.put(token, principal, float(claims["exp"]))
        return principal

    def _key_for(self, token: str) -> tuple[Ed25519PublicKey | bytes, str]:
        alg = token_algorithm(token, TOKEN_LENGTH_MAX)
        if alg == "EdDSA":
            return self.public_key, "EdDSA"
        if alg == "HS256" and self.hs256_secret is not None:
            return self.hs256_secret, "HS256"
        raise TokenRejected(f"the token's algorithm {alg[:16]!r} is not accepted")


def check_claims(claims: dict[str, object]) -> Principal:
    """The principal of verified claims: a role of ours, a subject that can prefix idempotency keys."""
    sub, role = subject_and_role(claims)
    if role not in ROLES:
        raise TokenRejected("the token's role is not known")
    if not SUBJECT_PATTERN.match(sub):
        raise TokenRejected("the token's subject is not acceptable")
    return Principal(sub, role)


# ---- keys --------------------------------------------------------------------------------------------------


def ensure_dev_keys(keys_dir: Path) -> Ed25519PrivateKey:
    """The development keypair under ``keys_dir``, generated once (safe against concurrent first starts)."""
    keys_dir.mkdir(parents=True, exist_ok=True)
    private_path, public_path = keys_dir / DEV_PRIVATE_KEY_FILENAME, keys_dir / DEV_PUBLIC_KEY_FILENAME
    with (keys_dir / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not private_path.exists():
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
            tmp = private_path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(pem)
            tmp.replace(private_path)
        private_key = load_private_key(private_path)
        public_pem = private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                           serialization.PublicFormat.SubjectPublicKeyInfo)
        if not public_path.exists() or public_path.read_bytes() != public_pem:
            public_path.write_bytes(public_pem)
    return private_key


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise UnsafeConfiguration(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise UnsafeConfiguration(f"{path} is not an Ed25519 public key")
    return key


def verifier_for(settings: ApiSettings) -> TokenVerifier:
    """The verifier this configuration calls for; raises ``UnsafeConfiguration`` outside development with
    development credentials."""
    reasons = settings.unsafe_reasons()
    if reasons:
        raise UnsafeConfiguration("refusing to start: " + "; ".join(reasons))
    if settings.is_development and settings.jwt_public_key_file is None:
        public_key = ensure_dev_keys(settings.dev_keys_dir).public_key()
    else:
        assert settings.jwt_public_key_file is not None
        public_key = load_public_key(settings.jwt_public_key_file)
    return TokenVerifier(public_key, settings.hs256_secret() if settings.is_development else None)


def signing_key_for(settings: ApiSettings) -> Ed25519PrivateKey:
    """The key that mints tokens: the configured private key, or the development one (development only)."""
    if settings.jwt_private_key_file is not None:
        return load_private_key(settings.jwt_private_key_file)
    if not settings.is_development:
        raise UnsafeConfiguration("no RAZAO_JWT_PRIVATE_KEY_FILE, and development keys exist only in development")
    return ensure_dev_keys(settings.dev_keys_dir)


def mint_token(
    key: Ed25519PrivateKey | bytes, sub: str, role: str, *, ttl_s: int = TOKEN_TTL_S_DEFAULT,
    now: float | None = None, **extra_claims: object,
) -> str:
    """A signed token (EdDSA for an Ed25519 key, HS256 for a secret) with every required claim."""
    issued = int(time.time() if now is None else now)
    claims = {"sub": sub, "role": role, "aud": AUDIENCE, "iss": ISSUER, "iat": issued, "exp": issued + ttl_s,
              **extra_claims}
    algorithm = "HS256" if isinstance(key, bytes) else "EdDSA"
    return jwt.encode(claims, key, algorithm=algorithm)
