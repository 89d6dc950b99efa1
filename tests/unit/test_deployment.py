"""docker-compose.yml (production) stays in step with the code, though no Docker engine runs here to start it."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from commands import relay
from commands import services as api_services
from infra.settings import Settings
from projections import bootstrap as read_side

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / "infra" / "docker" / "razao.env.example"
SOURCE_DIRS = ("ledger", "commands", "projections", "infra", "scoring")
PLATFORM = ("api", "relay", "projector", "query-api")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def source_text() -> str:
    return "\n".join(p.read_text() for d in SOURCE_DIRS for p in (ROOT / d).rglob("*.py"))


def _module_of(argv: list[str] | tuple[str, ...]) -> str:
    return argv[list(argv).index("-m") + 1]


def test_the_platform_runs_the_processes_razao_up_runs(compose: dict[str, Any], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Each process `razao up` starts (sandbox PSPs aside) is a compose service running the same module."""
    for variable in ("RAZAO_API_PORT", "RAZAO_RELAY_PORT", "RAZAO_PROJECTOR_PORT", "RAZAO_QUERY_PORT"):
        monkeypatch.delenv(variable, raising=False)
    settings = Settings(state_dir=tmp_path, pg_dsn="postgresql://x@h/razao", redis_url="redis://h",
                        kafka_bootstrap="h:9092")
    specs = [*api_services.services(settings), *relay.services(settings), *read_side.services(settings)]
    local = {spec.name: _module_of(spec.argv) for spec in specs}
    deployed = {name: _module_of(compose["services"][name]["command"]) for name in PLATFORM}
    assert local == deployed
    for module in deployed.values():
        assert importlib.util.find_spec(module) is not None, module


def test_every_setting_it_passes_is_one_the_code_reads(compose: dict[str, Any], source_text: str) -> None:
    names = set()
    for service in compose["services"].values():
        names |= {k for k in (service.get("environment") or {}) if k.startswith("RAZAO_")}
    names |= set(re.findall(r"^(RAZAO_[A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), flags=re.MULTILINE))
    assert {"RAZAO_PG_DSN", "RAZAO_KAFKA_BOOTSTRAP", "RAZAO_JWT_PUBLIC_KEY_FILE"} <= names
    for name in sorted(names):
        # PSP settings are read by prefix and suffix (infra/pix_gateway.py); API settings by pydantic's prefix.
        if name.startswith("RAZAO_PSP_"):
            suffix = name.split("_", 3)[3]
            assert f'"{suffix}"' in source_text, name
        elif name.startswith(("RAZAO_PIX_", "RAZAO_ENV")):
            field = name.removeprefix("RAZAO_").lower()
            assert re.search(rf"^\s+{field}: ", source_text, flags=re.MULTILINE), name
        else:
            assert f'"{name}"' in source_text, name


def test_the_platform_services_share_one_image_and_their_secrets_exist(compose: dict[str, Any]) -> None:
    for name in PLATFORM:
        service = compose["services"][name]
        assert service["image"] == "razao:latest"
        assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        assert service["environment"]["RAZAO_ENV"] == "production"
        for secret in service.get("secrets", []):
            assert secret in compose["secrets"]
    init = ROOT / "infra" / "docker" / "postgres-init"
    mounted = [v for v in compose["services"]["postgres"]["volumes"] if "docker-entrypoint-initdb.d" in v]
    assert mounted == ["./infra/docker/postgres-init:/docker-entrypoint-initdb.d:ro"]
    assert any(p.stat().st_mode & 0o111 for p in init.glob("*.sh"))


def test_one_ledger_writer(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]
    assert api["deploy"]["replicas"] == 1


def test_postgres_never_trades_durability_for_speed(compose: dict[str, Any]) -> None:
    settings = dict(item.split("=", 1) for item in compose["services"]["postgres"]["command"] if "=" in item)
    assert settings["fsync"] == settings["synchronous_commit"] == settings["full_page_writes"] == "on"
    assert settings["archive_mode"] == "on" and settings["wal_level"] == "replica"
    replica = compose["services"]["postgres-replica"]["command"][0]
    assert "pg_basebackup" in replica and " -R" in replica  # a streaming standby of the primary


def test_kafka_is_three_voters_and_the_ledger_topic_is_replicated(compose: dict[str, Any]) -> None:
    nodes = [compose["services"][f"kafka-{i}"]["environment"] for i in (1, 2, 3)]
    assert sorted(int(n["KAFKA_NODE_ID"]) for n in nodes) == [1, 2, 3]
    assert len({n["KAFKA_CONTROLLER_QUORUM_VOTERS"] for n in nodes}) == 1
    assert len({n["CLUSTER_ID"] for n in nodes}) == 1
    for node in nodes:
        assert int(node["KAFKA_MIN_INSYNC_REPLICAS"]) == 2 and node["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
        assert node["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://kafka-{node['KAFKA_NODE_ID']}:9092"
    replication = compose["services"]["relay"]["environment"]["RAZAO_LEDGER_TOPIC_REPLICATION"]
    assert relay.topic_replication({"RAZAO_LEDGER_TOPIC_REPLICATION": replication}) == 3
    bootstrap = compose["services"]["api"]["environment"]["RAZAO_KAFKA_BOOTSTRAP"]
    assert bootstrap == ",".join(f"kafka-{i}:9092" for i in (1, 2, 3))
