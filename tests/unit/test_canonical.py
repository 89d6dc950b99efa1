"""The writer's fast JSON texts are byte for byte the standard encoder's, whatever the values."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger import canonical
from ledger.canonical import chain_text, stored_text


def _chain_reference(previous: str, event_type: str, originator_id: uuid.UUID, version: int,
                     body: dict[str, Any]) -> bytes:
    text = json.dumps([previous, event_type, str(originator_id), version, body], sort_keys=True, default=str,
                      separators=(",", ":"))
    return text.encode("ascii")


def _wrap(value: Any) -> Any:
    if type(value) is uuid.UUID:
        return {"_type_": "uuid_hex", "_data_": value.hex}
    if type(value) is datetime:
        return {"_type_": "datetime_iso", "_data_": value.isoformat()}
    return value


def _stored_reference(state: dict[str, Any]) -> bytes:
    """What the library's transcoder writes for an event's state of these value types."""
    wrapped = {k: _wrap(v) for k, v in state.items()}
    return json.dumps(wrapped, separators=(",", ":"), ensure_ascii=False).encode("utf8")


_datetimes = st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=-3))])) | st.datetimes()
_ints = st.integers() | st.integers(min_value=-(2**63), max_value=2**64)
_scalars = st.text() | _ints | st.none() | st.booleans()
_values = _scalars | st.uuids() | _datetimes | st.lists(_ints, max_size=4)
_keys = st.text(min_size=1, max_size=12)


@given(body=st.dictionaries(_keys, _values, max_size=8), previous=st.text(max_size=70),
       version=_ints, originator=st.uuids())
def test_chain_text_is_the_standard_encoders(body: dict[str, Any], previous: str, version: int,
                                             originator: uuid.UUID) -> None:
    assert chain_text(previous, "TransferCommitted", originator, version, body) == _chain_reference(
        previous, "TransferCommitted", originator, version, body
    )


@given(state=st.dictionaries(_keys, _values, max_size=8))
def test_stored_text_is_the_standard_encoders(state: dict[str, Any]) -> None:
    assert stored_text(dict(state)) == _stored_reference(state)


@pytest.mark.parametrize("odd", [[uuid.uuid4()], ("a", 1), 1.5, {"k": uuid.uuid4()}, {1: "v"}])
def test_a_value_outside_the_plain_types_is_left_to_the_standard_encoder(odd: Any) -> None:
    body = {"a": odd, "b": "x"}
    assert chain_text("p", "T", uuid.UUID(int=1), 1, body) == _chain_reference("p", "T", uuid.UUID(int=1), 1, body)
    state = {"a": odd}
    try:
        expected = _stored_reference(state)
    except TypeError:
        with pytest.raises(TypeError):
            stored_text(dict(state))
    else:
        assert stored_text(dict(state)) == expected


def test_a_transfers_texts_do_not_fall_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """The speed this module exists for: an ordinary transfer's texts come from orjson."""
    def refuse(_: object) -> str:
        raise AssertionError("fell back to the standard encoder")

    monkeypatch.setattr(canonical, "_CHAIN_JSON", refuse)
    monkeypatch.setattr(canonical, "_STORED_JSON", refuse)
    account = uuid.uuid4()
    now = datetime.now(UTC)
    body = {"timestamp": now, "key": "pedido:42", "kind": "single", "debit_account_id": account,
            "amount_centavos": 1_000, "pending_id": None, "debit_after": [0, 1_000, 0, 5_000], "reference": "",
            "linked": False}
    assert chain_text("ab" * 32, "TransferCommitted", account, 1, body).startswith(b'["abab')
    state = {"timestamp": now, "key": "pedido:42", "reference": "ação ✓", "debit_after": [0, 1_000, 0, 5_000],
             "debit_account_id": account}
    assert stored_text(state).startswith(b'{"timestamp":{"_type_":"datetime_iso"')


_trees = st.recursive(_scalars, lambda children: st.lists(children, max_size=4)
                      | st.dictionaries(st.text(max_size=6), children, max_size=4), max_leaves=24)


@given(state=st.dictionaries(_keys, _trees | st.uuids() | _datetimes, max_size=6))
def test_nested_lists_and_dicts_are_stored_as_the_standard_encoder_writes_them(state: dict[str, Any]) -> None:
    """A checkpoint's rows: lists and string-keyed dicts of plain values, at any depth (deep ones fall back)."""
    assert stored_text(dict(state)) == _stored_reference(state)


def test_a_checkpoints_rows_do_not_fall_back(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(_: object) -> str:
        raise AssertionError("fell back to the standard encoder")

    monkeypatch.setattr(canonical, "_STORED_JSON", refuse)
    rows = [[str(uuid.uuid4()), 986, 2, 0, "wallet \"ana\"\n", 0, 10, 0, 25, 3, None] for _ in range(3)]
    state = {"timestamp": datetime.now(UTC), "position": 7, "chain_hash": "ab" * 32, "accounts": rows,
             "pending": [], "pix": {"deposits": "eJz=", "received": ""}}
    assert stored_text(state).startswith(b'{"timestamp":{"_type_":"datetime_iso"')
