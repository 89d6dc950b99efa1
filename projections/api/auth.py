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

import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from projections.limits import TOKEN_LEEWAY_S, TOKEN_LENGTH_MAX

AUDIENCE: Final = "razao-api"
ISSUER: Final = "razao-auth"
CUSTOMER_ROLES: Final = frozenset({"investor", "borrower"})
SEE_ALL_ROLES: Final = frozenset({"auditor", "operator"})
#: Verified tokens kept, so a client's repeated token costs a dict lookup rather than a signature check.
TOKEN_CACHE_ENTRIES_MAX: Final = 10_000


class TokenRejected(Exception):
    """The token is missing or unacceptable; the message is safe to show the caller."""


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
    def __init__(self, public_key_files: tuple[Path, ...]) -> None:
        self.public_key_files = public_key_files
        self._key: Ed25519PublicKey | None = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, tuple[Principal, float]] = OrderedDict()

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
        if len(token) > TOKEN_LENGTH_MAX:
            raise TokenRejected("the token is too long")
        with self._lock:
            cached = self._cache.get(token)
            if cached is not None and cached[1] > now - TOKEN_LEEWAY_S:
                self._cache.move_to_end(token)
                return cached[0]
        try:
            claims = jwt.decode(token, self._public_key(), algorithms=["EdDSA"], audience=AUDIENCE, issuer=ISSUER,
                                leeway=TOKEN_LEEWAY_S,
                                options={"require": ["sub", "role", "aud", "iss", "exp", "iat"]})
        except jwt.ExpiredSignatureError:
            raise TokenRejected("the token has expired") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRejected(f"the token lacks the {exc.claim!r} claim") from None
        except (jwt.InvalidAudienceError, jwt.InvalidIssuerError):
            raise TokenRejected("the token was not issued for this API") from None
        except jwt.PyJWTError:
            raise TokenRejected("the token is not valid") from None
        principal = _principal(claims)
        with self._lock:
            self._cache[token] = (principal, float(claims["exp"]))
            if len(self._cache) > TOKEN_CACHE_ENTRIES_MAX:
                self._cache.popitem(last=False)
        return principal


def _principal(claims: dict[str, object]) -> Principal:
    sub, role = claims.get("sub"), claims.get("role")
    if not isinstance(sub, str) or not isinstance(role, str):
        raise TokenRejected("the token's subject and role must be strings")
    if role in CUSTOMER_ROLES:
        try:
            canonical = str(uuid.UUID(sub))
        except ValueError:
            canonical = ""
        if canonical != sub:
            raise TokenRejected("a customer's subject must be their party id (a lowercase UUID)")
    return Principal(sub, role)


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise TokenRejected("missing bearer token")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenRejected("the Authorization header must be 'Bearer <token>'")
    return token.strip()
