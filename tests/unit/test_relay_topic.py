"""How the relay creates the ledger topic: one partition always; replicas from RAZAO_LEDGER_TOPIC_REPLICATION."""

from __future__ import annotations

import argparse

import pytest

from commands import relay
from commands.relay import ledger_topic, topic_replication


def test_one_replica_unless_configured() -> None:
    assert topic_replication({}) == 1
    assert topic_replication({"RAZAO_LEDGER_TOPIC_REPLICATION": ""}) == 1
    assert topic_replication({"RAZAO_LEDGER_TOPIC_REPLICATION": "3"}) == 3


@pytest.mark.parametrize("bad", ["0", "8", "-1", "three", "2.5", " 3"])
def test_a_bad_replication_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="RAZAO_LEDGER_TOPIC_REPLICATION"):
        topic_replication({"RAZAO_LEDGER_TOPIC_REPLICATION": bad})


def test_a_replicated_topic_needs_all_but_one_replica_in_sync() -> None:
    single = ledger_topic("ledger", 1)
    assert (single.num_partitions, single.replication_factor, single.topic_configs) == (1, 1, {})
    replicated = ledger_topic("ledger", 3)
    assert (replicated.num_partitions, replicated.replication_factor) == (1, 3)
    assert replicated.topic_configs == {"min.insync.replicas": "2"}


def test_relay_run_refuses_a_bad_replication_before_connecting_anywhere(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RAZAO_LEDGER_TOPIC_REPLICATION", "0")

    def must_not_run(*_: object, **__: object) -> int:
        raise AssertionError("the relay started with a bad setting")

    monkeypatch.setattr(relay, "run_relay", must_not_run)
    args = argparse.Namespace(dsn=None, name="main", topic="ledger", port=0)
    assert relay._cli_run(args) == 2
    assert "RAZAO_LEDGER_TOPIC_REPLICATION must be an integer from 1 to 7" in capsys.readouterr().err
