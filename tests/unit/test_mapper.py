"""The ledger's mapper stores exactly the bytes the library's mapper would, for every event type and shape."""

from __future__ import annotations

import dataclasses
import typing
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from eventsourcing.application import Application
from eventsourcing.persistence import Mapper, StoredEvent

from ledger.application import LedgerApplication, LedgerMapper, ledger_env
from ledger.events import EVENT_TYPES, LedgerEvent


def _value(annotation: Any, variant: int) -> Any:
    """A value of ``annotation``; ``variant`` picks among None / edge cases so every shape is covered."""
    args = typing.get_args(annotation)
    if type(None) in args:  # Optional: None on even variants
        if variant % 2 == 0:
            return None
        return _value(next(a for a in args if a is not type(None)), variant)
    if annotation is uuid.UUID:
        return uuid.uuid4()
    if annotation is datetime:
        zones = (UTC, timezone(timedelta(hours=-3)))
        return datetime(2026, 11, 29, 8, 30, 1, 123456 if variant % 2 else 0, tzinfo=zones[variant % 2])
    if annotation is str:
        return ("ação ✓ \"quoted\" \\ \n tab\t", "", "plain")[variant % 3]
    if annotation is int:
        return (0, 7, 2**62)[variant % 3]
    origin = typing.get_origin(annotation)
    if origin is list:
        return [[1, "a", None]] if typing.get_args(annotation)[0] is not int else [1, 0, 2**40, 3]
    if origin is dict:
        return {"k": "v", "ç": "ã"}
    raise AssertionError(f"no sample for {annotation!r}")


def _sample(cls: type[LedgerEvent], variant: int) -> LedgerEvent:
    hints = typing.get_type_hints(cls, include_extras=False)
    values = {f.name: _value(hints[f.name], variant) for f in dataclasses.fields(cls)}
    values["originator_version"] = 1 + variant
    values["chain_hash"] = "ab" * 32
    return cls(**values)


@pytest.fixture(scope="module")
def mappers() -> tuple[Mapper[uuid.UUID], Mapper[uuid.UUID]]:
    app = LedgerApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo", **ledger_env()})
    library = Application.construct_mapper(app)  # what the library would build for this application
    assert isinstance(app.mapper, LedgerMapper) and app.mapper.fast
    assert type(library) is Mapper
    return app.mapper, library


@pytest.mark.parametrize("name", sorted(EVENT_TYPES))
@pytest.mark.parametrize("variant", [0, 1, 2, 3])
def test_fast_path_stores_the_librarys_bytes(name: str, variant: int,
                                             mappers: tuple[Mapper[uuid.UUID], Mapper[uuid.UUID]]) -> None:
    ours, library = mappers
    event = _sample(EVENT_TYPES[name], variant)
    fast, reference = ours.to_stored_event(event), library.to_stored_event(event)
    assert isinstance(fast, StoredEvent)
    assert fast == reference
    # And it reads back as the same event.
    assert ours.to_domain_event(fast) == event


def test_a_value_the_fast_path_does_not_know_takes_the_librarys_path(
        mappers: tuple[Mapper[uuid.UUID], Mapper[uuid.UUID]]) -> None:
    ours, library = mappers
    event = _sample(EVENT_TYPES["TransferCommitted"], 1)
    # A UUID nested in a list is not wrapped by the fast path; the library's transcoder handles it.
    odd = dataclasses.replace(event, debit_after=[uuid.uuid4()])  # type: ignore[list-item]
    assert ours.to_stored_event(odd) == library.to_stored_event(odd)


def test_a_checkpoint_takes_the_fast_path_with_the_librarys_bytes(
        mappers: tuple[Mapper[uuid.UUID], Mapper[uuid.UUID]], monkeypatch: pytest.MonkeyPatch) -> None:
    from ledger import canonical
    from ledger.events import LedgerCheckpoint

    ours, library = mappers
    rows = [[str(uuid.uuid4()), 986, 2, 1, "ação ✓ \"q\" \\ \n\t\x01", 0, 2**40, 3, 4, 5, None],
            [str(uuid.uuid4()), 986, 400, 0, "", 10, 0, 0, 0, 1, str(uuid.uuid4())]]
    checkpoint = LedgerCheckpoint(
        originator_id=uuid.uuid4(), originator_version=1234, timestamp=datetime(2026, 11, 29, 8, 30, 1, tzinfo=UTC),
        position=1234, chain_hash="ab" * 32, accounts=rows, pending=[[str(uuid.uuid4()), 500, None, True]],
        parties=[], pix={"deposits": "eJzLSM3JyQcABiwCFQ==", "received": ""},
    )
    reference = library.to_stored_event(checkpoint)

    def refuse(_: object) -> str:
        raise AssertionError("the checkpoint fell back to the standard encoder")

    monkeypatch.setattr(canonical, "_STORED_JSON", refuse)  # the orjson path, and only it
    fast = ours.to_stored_event(checkpoint)
    assert fast == reference
    assert ours.to_domain_event(fast) == checkpoint
