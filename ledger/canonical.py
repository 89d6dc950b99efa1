"""The two JSON texts the writer produces per event: the chain's canonical form and the stored state.

Both are defined by the standard library's ``json`` (``chain_text``'s rule is what auditors recompute, see
docs/events.md). On the writer's hot path the same bytes come from ``orjson``, which is several times faster,
but only where the two encoders provably agree: values of plain types (str, int, bool, None, UUID, datetime,
lists of ints; in the stored state also lists and string-keyed dicts of plain values, as a checkpoint's rows) and,
for the ASCII-only chain text, an output with no byte the standard encoder would escape.
Anything else takes the ``json`` path, so the bytes never depend on which encoder ran. The tests compare both
paths on arbitrary text, integers and every event type.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson

#: The chain's canonical JSON: sorted keys, no spaces, ASCII, anything else as ``str()``.
_CHAIN_JSON = json.JSONEncoder(sort_keys=True, default=str, separators=(",", ":")).encode
#: The event store's JSON transcoder settings (compact, UTF-8), without its fallback for unknown types.
_STORED_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

_CHAIN_FAST = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME
_PLAIN: frozenset[type] = frozenset({str, int, bool, type(None)})
_CHAIN_ALLOWED: frozenset[type] = _PLAIN | {UUID, datetime}
_DEL = b"\x7f"  # the one ASCII byte the standard encoder escapes with ensure_ascii and orjson does not
#: How deep ``_plain_tree`` looks into nested lists and dicts (a checkpoint's rows are two levels deep).
_NESTING_MAX = 4


def _plain_tree(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is a plain value, or lists and string-keyed dicts of them, nested at most
    ``_NESTING_MAX`` deep: what both encoders write alike in the stored state (``ensure_ascii=False``)."""
    kind = type(value)
    if kind in _PLAIN:
        return True
    if depth >= _NESTING_MAX:
        return False
    if kind is list:
        if set(map(type, value)) <= _PLAIN:  # the common case (a row), without a call per item
            return True
        return all(_plain_tree(item, depth + 1) for item in value)
    if kind is dict:
        return all(type(key) is str and _plain_tree(item, depth + 1) for key, item in value.items())
    return False


def _all_agree(values: Iterable[Any], allowed: frozenset[type]) -> bool:
    """Whether both encoders write every one of ``values`` alike: each of an ``allowed`` type or a list of ints
    (the balances). One loop, without a call per value: this runs twice per event on the writer's hot path."""
    for value in values:
        kind = type(value)
        if kind not in allowed and not (kind is list and all(type(x) is int for x in value)):
            return False
    return True


def chain_text(previous_hash: str, event_type: str, originator_id: UUID, version: int,
               body: dict[str, Any]) -> bytes:
    """``json.dumps([previous_hash, event_type, str(originator_id), version, body], sort_keys=True,
    default=str, separators=(",", ":"))`` encoded as ASCII: the text the chain hash is taken over."""
    item = [previous_hash, event_type, str(originator_id), version, body]
    if (type(version) is int and type(previous_hash) is str and type(event_type) is str
            and _all_agree(body.values(), _CHAIN_ALLOWED)):
        try:
            # datetimes are passed through to ``default=str``, exactly as the standard encoder does.
            text = orjson.dumps(item, default=str, option=_CHAIN_FAST)
        except orjson.JSONEncodeError:  # e.g. an int beyond 64 bits
            pass
        else:
            if text.isascii() and _DEL not in text:
                return text
    return _CHAIN_JSON(item).encode("ascii")


def stored_text(state: dict[str, Any]) -> bytes:
    """An event's stored state as the library's JSON transcoder writes it: each top-level UUID and datetime
    wrapped (``{"_type_": "uuid_hex", ...}``, ``{"_type_": "datetime_iso", ...}``, in place: ``state`` must be
    the caller's own copy), compact, UTF-8. Anything else that is not a plain value, or lists and string-keyed
    dicts of them, is encoded by the standard encoder, which writes what the transcoder would for those types and
    raises ``TypeError`` for others (a nested UUID, another type): the caller then takes the library's own path."""
    plain = True
    for key, value in state.items():  # replaces values only: the dict keeps its size and order
        kind = type(value)
        if kind in _PLAIN:
            continue
        if kind is UUID:
            state[key] = {"_type_": "uuid_hex", "_data_": value.hex}
        elif kind is datetime:
            state[key] = {"_type_": "datetime_iso", "_data_": value.isoformat()}
        elif not _plain_tree(value):
            plain = False  # e.g. a float or a nested UUID: the standard encoder decides, or refuses
    if plain:
        try:
            return orjson.dumps(state)
        except orjson.JSONEncodeError:  # e.g. an int beyond 64 bits, a lone surrogate
            pass
    return _STORED_JSON(state).encode("utf8")


def stored_text_in_chunks(state: dict[str, Any], list_keys: Iterable[str], chunk: int,
                          pause: Callable[[], None]) -> bytes:
    """``stored_text(state)``, byte for byte, with each list under ``list_keys`` (rows of plain values) encoded
    ``chunk`` items at a time and ``pause`` called after each chunk: one call would hold the interpreter for the
    whole list. A list that is not all plain values is left to ``stored_text`` (same bytes, one call). Raises
    ``TypeError`` as ``stored_text`` does, and when the rows cannot be placed; ``state`` must be the caller's own
    copy."""
    assert chunk > 0
    spliced: dict[str, list[bytes]] = {}
    for key in list_keys:
        items = state.get(key)
        if type(items) is not list or len(items) <= chunk:
            continue
        parts: list[bytes] = []
        for start in range(0, len(items), chunk):
            part = items[start:start + chunk]
            try:
                if not _plain_tree(part):
                    raise TypeError("not plain")
                parts.append(orjson.dumps(part)[1:-1])  # compact, so the items joined by "," are the list's text
            except (TypeError, orjson.JSONEncodeError):  # e.g. a float, an int beyond 64 bits, a lone surrogate
                parts = []
                break
            pause()
        if parts:
            spliced[key] = parts
            state[key] = []
    text = stored_text(state)  # short now: the long lists are empty
    places: list[tuple[int, list[bytes]]] = []
    for key, parts in spliced.items():
        empty = orjson.dumps({key: []})[1:-1]  # b'"key":[]'
        # Inside a JSON string every quote is escaped, so the key's own text can only occur as the key.
        if text.count(empty) != 1:
            raise TypeError(f"cannot place the rows of {key!r}")
        places.append((text.index(empty) + len(empty) - 1, parts))  # where the "]" is
    # One copy of the rows into the result: the text around them, the parts and the commas between them.
    pieces: list[bytes] = []
    at = 0
    for index, parts in sorted(places, key=lambda place: place[0]):
        pieces.append(text[at:index])
        separated = [b","] * (2 * len(parts) - 1)
        separated[::2] = parts
        pieces.extend(separated)
        at = index
    pieces.append(text[at:])
    return b"".join(pieces)
