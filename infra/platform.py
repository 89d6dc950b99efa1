"""`razao up|down|status`: the stack plus every platform service (command API, relay, projectors, ...).

Services are described by `ServiceSpec`s from two places: `SERVICES` below, for services that live in `infra`,
and the `razao.services` entry point group (see `infra.plugins`), through which `commands` and `projections`
contribute theirs without `infra` importing them. Each runs in the background with its output in
`<state_dir>/logs/<name>.log`; `<state_dir>/platform.json` records what was started, like stack.json does for
the stack.
"""

from __future__ import annotations

import argparse
import os
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.plugins import SERVICES_GROUP, discover
from infra.probes import Endpoint, accepts_connections, wait_for
from infra.processes import ProcessRecord, is_alive, locked, log_tail, read_json, spawn, stop, write_json
from infra.settings import (
    ENV_KAFKA_BOOTSTRAP,
    ENV_PG_DSN,
    ENV_REDIS_URL,
    ENV_STATE_DIR,
    Settings,
    load_settings,
    state_dir_from,
)
from infra.stack import Report, format_status, report_line, stack_down, stack_status, stack_up

PLATFORM_FILE = "platform.json"
PLATFORM_LOCK_FILE = "platform.lock"
HEALTH_TIMEOUT_S = 2.0


class PlatformError(RuntimeError):
    """A service could not be started or stopped; the message says why."""


@dataclass(frozen=True)
class ServiceSpec:
    """How to run one platform service and how to tell that it is ready.

    Ready means `health_url` answers HTTP 2xx when given, else that `port` on 127.0.0.1 accepts connections.
    The service receives RAZAO_PG_DSN, RAZAO_REDIS_URL, RAZAO_KAFKA_BOOTSTRAP and RAZAO_STATE_DIR as resolved
    by `load_settings`, plus `env`.
    """

    name: str
    argv: tuple[str, ...]
    health_url: str | None = None
    port: int | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    ready_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.argv:
            raise ValueError(f"service {self.name!r} has an empty argv")
        if self.health_url is None and self.port is None:
            raise ValueError(f"service {self.name!r} needs a health_url or a port to tell when it is ready")
        if self.health_url is not None and not self.health_url.startswith(("http://", "https://")):
            raise ValueError(f"service {self.name!r}: health_url must be http(s), got {self.health_url!r}")

    @property
    def address(self) -> str:
        return self.health_url or f"127.0.0.1:{self.port}"


# Services that live in infra itself (e.g. the sandbox PSP). Other packages use the entry point group.
SERVICES: tuple[ServiceSpec, ...] = ()


def discover_services(settings: Settings) -> list[ServiceSpec]:
    """SERVICES, then each `razao.services` provider's specs; raises PlatformError on a duplicate name."""
    specs = list(SERVICES)
    for entry_point, provider in discover(SERVICES_GROUP):
        if not callable(provider):
            raise PlatformError(f"{SERVICES_GROUP} entry point {entry_point.value} is not callable")
        provided: Iterable[ServiceSpec] = provider(settings)
        specs.extend(provided)
    names = [spec.name for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise PlatformError(f"more than one service is named {', '.join(duplicates)}")
    return specs


def is_healthy(spec_address: str) -> bool:
    """Whether a service address (health URL or host:port) answers."""
    if spec_address.startswith(("http://", "https://")):
        try:
            # The scheme is checked above and in ServiceSpec: no file:// or custom opener can get here.
            with urllib.request.urlopen(spec_address, timeout=HEALTH_TIMEOUT_S) as response:  # noqa: S310
                return 200 <= int(response.status) < 300
        except (urllib.error.URLError, OSError):
            return False
    host, _, port = spec_address.rpartition(":")
    return accepts_connections(Endpoint(host, int(port)))


def service_env(settings: Settings, spec: ServiceSpec) -> dict[str, str]:
    return {
        **os.environ,
        ENV_PG_DSN: settings.pg_dsn,
        ENV_REDIS_URL: settings.redis_url,
        ENV_KAFKA_BOOTSTRAP: settings.kafka_bootstrap,
        ENV_STATE_DIR: str(settings.state_dir),
        **spec.env,
    }


def _start_service(spec: ServiceSpec, settings: Settings) -> dict[str, Any]:
    log = settings.state_dir / "logs" / f"{spec.name}.log"
    process = spawn(spec.argv, log, env=service_env(settings, spec))

    def settled() -> bool:
        return not is_alive(process) or is_healthy(spec.address)

    wait_for(settled, spec.ready_timeout_s, interval_s=0.2)
    if not is_alive(process):
        raise PlatformError(f"service {spec.name} exited at start; its log ({log}):\n{log_tail(log)}")
    if not is_healthy(spec.address):
        outcome = stop(process)
        raise PlatformError(
            f"service {spec.name} was not ready at {spec.address} within {spec.ready_timeout_s:.0f}s "
            f"({outcome}); its log ({log}):\n{log_tail(log)}"
        )
    return {"process": process.to_json(), "address": spec.address, "log": str(log)}


def service_base_url(state_dir: Path, name: str) -> str | None:
    """``http://host:port`` of a service `razao up` started (from its recorded health address), or None."""
    address = str(_load_services(state_dir).get(name, {}).get("address") or "")
    scheme, _, rest = address.partition("://")
    return f"{scheme}://{rest.partition('/')[0]}" if scheme.startswith("http") and rest else None


def _load_services(state_dir: Path) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = read_json(state_dir / PLATFORM_FILE).get("services", {})
    return services


def _save_services(state_dir: Path, services: Mapping[str, Mapping[str, Any]]) -> None:
    write_json(state_dir / PLATFORM_FILE, {"services": dict(services)})


def platform_up(report: Report = print) -> None:
    """Bring the stack up, then start every service that is not already running."""
    stack_up(report=report)
    settings = load_settings()
    with locked(settings.state_dir / PLATFORM_LOCK_FILE):
        services = _load_services(settings.state_dir)
        for spec in discover_services(settings):
            recorded = services.get(spec.name)
            if recorded and is_alive(ProcessRecord.from_json(recorded["process"])):
                report(report_line(spec.name, f"running (pid {recorded['process']['pid']})", spec.address))
                continue
            services[spec.name] = _start_service(spec, settings)
            _save_services(settings.state_dir, services)
            report(report_line(spec.name, f"started (pid {services[spec.name]['process']['pid']})", spec.address))


def platform_down(report: Report = print) -> None:
    """Stop the services we started (last started first), then the stack components we started."""
    state_dir = state_dir_from()
    with locked(state_dir / PLATFORM_LOCK_FILE):
        services = _load_services(state_dir)
        for name in reversed(list(services)):
            process = ProcessRecord.from_json(services[name]["process"])
            report(report_line(name, f"{stop(process)} (pid {process.pid})", services[name]["address"]))
            del services[name]
            _save_services(state_dir, services)
    stack_down(report=report)


def services_status(state_dir: Path) -> tuple[str, bool]:
    """A table of the recorded services, and whether every one of them is alive and healthy."""
    services = _load_services(state_dir)
    if not services:
        return "no platform services running", True
    lines, all_well = [f"{'SERVICE':<20} {'ALIVE':<6} {'HEALTHY':<8} {'PID':<8} ADDRESS"], True
    for name, entry in services.items():
        process = ProcessRecord.from_json(entry["process"])
        alive, healthy = is_alive(process), is_healthy(entry["address"])
        all_well = all_well and alive and healthy
        row = f"{name:<20} {_yes(alive):<6} {_yes(healthy):<8} {process.pid:<8} {entry['address']}"
        lines.append(row)
    return "\n".join(lines), all_well


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _cli_up(_args: argparse.Namespace) -> int:
    platform_up()
    return 0


def _cli_down(_args: argparse.Namespace) -> int:
    platform_down()
    return 0


#: Where the process that sends PIX records its PSP circuit breakers (infra.pix_gateway.breaker_state_recorder).
PIX_BREAKERS_FILE = Path("pix") / "breakers.json"


def pix_breakers_status(state_dir: Path) -> str | None:
    """The PSP circuit breakers as last recorded by the API (``None`` if PIX never ran here). An open breaker is
    information, not ill health: new payments fail over to the next PSP."""
    recorded = read_json(state_dir / PIX_BREAKERS_FILE)
    if not recorded:
        return None
    lines = [f"{'PSP':<20} {'BREAKER':<10} {'SINCE':<26} PID"]
    for psp, entry in sorted(recorded.items()):
        if isinstance(entry, dict):
            state, since, pid = entry.get("state", "?"), entry.get("since", "-"), entry.get("pid", "-")
            lines.append(f"{psp:<20} {state:<10} {since:<26} {pid}")
    return "\n".join(lines)


def _cli_status(_args: argparse.Namespace) -> int:
    statuses = stack_status()
    state_dir = state_dir_from()
    services_text, services_well = services_status(state_dir)
    print(format_status(statuses))
    print()
    print(services_text)
    breakers = pix_breakers_status(state_dir)
    if breakers is not None:
        print()
        print(breakers)
    return 0 if services_well and all(status.reachable for status in statuses) else 1


def register_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = subparsers.add_parser("up", help="bring the stack up and start every platform service")
    up.set_defaults(func=_cli_up)
    down = subparsers.add_parser("down", help="stop the platform services, then the servers razao started")
    down.set_defaults(func=_cli_down)
    status = subparsers.add_parser("status", help="the stack and every platform service")
    status.set_defaults(func=_cli_status)
