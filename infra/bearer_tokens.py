"""Bearer JWTs as both APIs verify them (PyJWT): the ``Authorization`` header, the decode with every claim required,
the reasons a token is refused, the rule for customers' subjects, and a bounded cache of verified tokens.

Each API keeps what differs: its keys and algorithms (the command API also accepts the development HS256 secret;
the query API EdDSA only, its key read from a file), its roles, and what a principal may do. The caller picks the
key *before* decoding, from the algorithm the token names, and passes exactly that one algorithm, so neither
``alg: none`` nor an HS256 token "signed" with a public key (algorithm confusion) can pass.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from typing import Any, Final, Generic, TypeVar

import jwt

AUDIENCE: Final = "razao-api"
ISSUER: Final = "razao-auth"
REQUIRED_CLAIMS: Final = ("sub", "role", "aud", "iss", "exp", "iat")
#: Customers are identified by their party id: their ``sub`` must be a UUID in canonical form.
CUSTOMER_ROLES: Final = frozenset({"investor", "borrower"})

P = TypeVar("P")


class TokenRejected(Exception):
    """The token is missing or not acceptable; the message says why (safe to show the caller)."""


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header; raises ``TokenRejected``."""
    if not authorization:
        raise TokenRejected("missing bearer token")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenRejected("the Authorization header must be 'Bearer <token>'")
    return token.strip()


def token_algorithm(token: str, length_max: int) -> str:
    """The algorithm a token names in its header (unverified: it only chooses the key)."""
    if not token or len(token) > length_max or not token.isascii():
        raise TokenRejected("the token is malformed")
    try:
        return str(jwt.get_unverified_header(token).get("alg"))
    except jwt.PyJWTError:
        raise TokenRejected("the token is malformed") from None


_REASONS: Final[tuple[tuple[type[jwt.PyJWTError], str], ...]] = (
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is not valid yet"),
    (jwt.InvalidAudienceError, f"the token's audience is not {AUDIENCE}"),
    (jwt.InvalidIssuerError, f"the token's issuer is not {ISSUER}"),
    (jwt.InvalidSignatureError, "the token's signature is not valid"),
    (jwt.InvalidIssuedAtError, "the token's iat is not a number"),
    (jwt.DecodeError, "the token is malformed"),
)


def decode_claims(token: str, key: Any, algorithm: str, *, leeway_s: int) -> dict[str, Any]:
    """The claims of a token signed with ``key`` under ``algorithm``, every claim of ``REQUIRED_CLAIMS`` present,
    ``exp``/``nbf``/``iat`` checked with ``leeway_s``, audience and issuer ours; raises ``TokenRejected``."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token, key, algorithms=[algorithm], audience=AUDIENCE, issuer=ISSUER, leeway=leeway_s,
            options={"require": list(REQUIRED_CLAIMS), "verify_signature": True, "verify_exp": True,
                     "verify_nbf": True, "verify_iat": True, "verify_aud": True, "verify_iss": True})
    except jwt.MissingRequiredClaimError as exc:
        raise TokenRejected(f"the token lacks the {exc.claim!r} claim") from None
    except jwt.PyJWTError as exc:
        reason = next((text for kind, text in _REASONS if isinstance(exc, kind)), "the token is not valid")
        raise TokenRejected(reason) from None
    if not isinstance(claims.get("iat"), int | float):
        raise TokenRejected("the token's iat is not a number")
    return claims


def subject_and_role(claims: dict[str, Any]) -> tuple[str, str]:
    """``sub`` and ``role`` as strings, a customer's ``sub`` their party id (a lowercase UUID)."""
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
    return sub, role


class VerifiedTokens(Generic[P]):
    """Verified tokens and their principals, least recently used first out, each until its ``exp`` (plus the
    leeway): a client's repeated token costs a dict lookup instead of a signature check. Thread safe."""

    def __init__(self, entries_max: int, leeway_s: int) -> None:
        assert entries_max > 0
        self.entries_max = entries_max
        self.leeway_s = leeway_s
        self._entries: OrderedDict[str, tuple[P, float]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, token: str, now: float) -> P | None:
        """The principal of a token verified before, or None; raises ``TokenRejected`` once it has expired."""
        with self._lock:
            cached = self._entries.get(token)
            if cached is None:
                self.misses += 1
                return None
            principal, exp = cached
            if now < exp + self.leeway_s:
                self.hits += 1
                self._entries.move_to_end(token)
                return principal
            del self._entries[token]
        raise TokenRejected("the token has expired")

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, token: str, principal: P, exp: float) -> None:
        with self._lock:
            self._entries[token] = (principal, exp)
            if len(self._entries) > self.entries_max:
                self._entries.popitem(last=False)
