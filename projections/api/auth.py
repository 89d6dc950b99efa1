"""Who calls: JWT bearer tokens (PyJWT, EdDSA only), with the claims the command API issues.

Required claims: ``sub``, ``role``, ``aud`` = ``razao-api``, ``iss`` = ``razao-auth``, ``exp``, ``iat``. Customers
(investor, borrower) are identified by their party id (a canonical UUID ``sub``) and see only their own party's
accounts; auditors and operators see everything; other roles may not read here. Only ``EdDSA`` is accepted, so
neither ``alg: none`` nor an HS256 token "signed" with the public key can pass.

The public key comes from ``RAZAO_JWT_PUBLIC_KEY_FILE`` or, in development, the key the command API generates
under ``<state_dir>/jwt/``. It is loaded on first use (and retried until present), because the two APIs may
start in any order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from projections.bootstrap import bearer_tokens
from projections.limits import TOKEN_LEEWAY_S, TOKEN_LENGTH_MAX

CUSTOMER_ROLES: Final = bearer_tokens.CUSTOMER_ROLES
SEE_ALL_ROLES: Final = frozenset({"auditor", "operator"})
TokenRejected = bearer_tokens.TokenRejected
bearer_token = bearer_tokens.bearer_token
#: Verified tokens kept, so a client's repeated token costs a dict lookup rather than a signature check.
TOKEN_CACHE_ENTRIES_MAX: Final = 10_000


class KeyUnavailable(Exception):
    """No public key to verify with yet."""


@dataclass(frozen=True, slots=True)
class Principal:
    sub: str
    role: str

    @property
    def sees_all(self) -> bool:
        return self.role in SEE_ALL_ROLES

    @property
    def party_id(self) -> str | None:
        """The caller's party id (customers only)."""
        return self.sub if self.role in CUSTOMER_ROLES else None


class TokenVerifier:
    """Verifies EdDSA bearer tokens (``infra.bearer_tokens``), keeping verified ones until their ``exp``."""

    def __init__(self, public_key_files: tuple[Path, ...]) -> None:
        self.public_key_files = public_key_files
        self._key: Ed25519PublicKey | None = None
        self._verified: bearer_tokens.VerifiedTokens[Principal] = bearer_tokens.VerifiedTokens(
            TOKEN_CACHE_ENTRIES_MAX, TOKEN_LEEWAY_S)

    def _public_key(self) -> Ed25519PublicKey:
        if self._key is None:
            path = next((p for p in self.public_key_files if p.is_file()), None)
            if path is None:
                raise KeyUnavailable(f"no JWT public key at {', '.join(map(str, self.public_key_files))}")
            key = serialization.load_pem_public_key(path.read_bytes())
            if not isinstance(key, Ed25519PublicKey):
                raise KeyUnavailable(f"{path} is not an Ed25519 public key")
            self._key = key
        return self._key

    def verify(self, token: str, now: float) -> Principal:
        principal = self._verified.get(token, now)
        if principal is None:
            algorithm = bearer_tokens.token_algorithm(token, TOKEN_LENGTH_MAX)
            if algorithm != "EdDSA":
                raise TokenRejected(f"the token's algorithm {algorithm[:16]!r} is not accepted")
            claims = bearer_tokens.decode_claims(token, self._public_key(), "EdDSA", leeway_s=TOKEN_LEEWAY_S)
            principal = Principal(*bearer_tokens.subject_and_role(claims))
            self._verified.put(token, principal, float(claims["exp"]))
        return principal
