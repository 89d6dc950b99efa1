"""Opaque pagination cursors: the last row's position, bound to the query it came from, signed with HMAC.

A cursor that was altered, truncated, or taken from another account's or another filter's listing is refused with
``QUERY_INVALID_CURSOR`` (400): a client cannot page into rows its query would not return.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from projections.api.problems import Problem
from projections.limits import POSITION_MAX

ENV_CURSOR_SECRET = "RAZAO_QUERY_CURSOR_SECRET"  # noqa: S105 - the name of a variable, not a secret
_MAC_BYTES = 16


def load_secret(state_dir: Path) -> bytes:
    """``RAZAO_QUERY_CURSOR_SECRET``, else a random key kept in ``<state_dir>/query-cursor.key`` (0600)."""
    explicit = os.environ.get(ENV_CURSOR_SECRET)
    if explicit:
        return explicit.encode()
    path = state_dir / "query-cursor.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
        if not path.exists():
            tmp.replace(path)
        else:
            tmp.unlink()
    return path.read_text().strip().encode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Cursors:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()[:_MAC_BYTES]

    def encode(self, scope: str, position: int) -> str:
        payload = json.dumps([scope, position], separators=(",", ":")).encode()
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def decode(self, scope: str, cursor: str) -> int:
        """The position a cursor of ``scope`` continues after; raises ``Problem(QUERY_INVALID_CURSOR)``."""
        try:
            body, _, mac = cursor.partition(".")
            payload = _unb64(body)
            valid = hmac.compare_digest(self._mac(payload), _unb64(mac))
            found_scope, position = json.loads(payload) if valid else (None, None)
        except (ValueError, TypeError):
            valid, found_scope, position = False, None, None
        if not valid or found_scope != scope or type(position) is not int or not 0 <= position <= POSITION_MAX:
            raise Problem("QUERY_INVALID_CURSOR", "the cursor is not one this listing issued")
        return position
