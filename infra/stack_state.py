"""The stack state file, `<state_dir>/stack.json`: where each backing server is and whether razao started it.

Shape (one entry per component, keyed by name):

    {"components": {"kafka": {"requested": "127.0.0.1:9092", "url": "127.0.0.1:9092", "origin": "started",
                              "kind": "tansu", "process": {...ProcessRecord...}, "stop_signal": 15,
                              "log": ".state/logs/kafka.log", "owner": "scripts-test-123",
                              "leases": {"scripts-test-123": {...ProcessRecord of the lease holder...}}}}}

`requested` is the address razao was asked for (environment or default) and `url` the address where the server
really is: they differ when razao had to fall back to an embedded server or move Kafka to a free port, and
`infra.settings.load_settings` uses the pair to send everyone to the real address.

`owner` is None for components started by a plain `razao stack up` / `razao up`: those run until `razao stack
down`. Components started with `--owner NAME` are leased: each `up --owner` adds a lease, each `down --owner`
removes one, and the component stops when the last lease is gone (see `infra.stack`).
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from infra.processes import ProcessRecord, is_alive, read_json, write_json

STACK_FILE = "stack.json"
STACK_LOCK_FILE = "stack.lock"
COMPONENTS = ("postgres", "redis", "kafka")

Origin = Literal["external", "started"]


@dataclass(frozen=True)
class Component:
    name: str
    requested: str
    url: str
    origin: Origin
    kind: str
    process: ProcessRecord | None = None
    stop_signal: int = signal.SIGTERM
    log: str | None = None
    owner: str | None = None
    leases: Mapping[str, ProcessRecord] = field(default_factory=dict)

    @property
    def started_by_us(self) -> bool:
        return self.origin == "started"

    def process_alive(self) -> bool:
        return self.process is not None and is_alive(self.process)

    def to_json(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "url": self.url,
            "origin": self.origin,
            "kind": self.kind,
            "process": self.process.to_json() if self.process else None,
            "stop_signal": int(self.stop_signal),
            "log": self.log,
            "owner": self.owner,
            "leases": {name: holder.to_json() for name, holder in self.leases.items()},
        }

    @classmethod
    def from_json(cls, name: str, data: Mapping[str, Any]) -> Component:
        origin = data["origin"]
        if origin not in ("external", "started"):
            raise ValueError(f"component {name!r} has unknown origin {origin!r}")
        process = data.get("process")
        return cls(
            name=name,
            requested=str(data["requested"]),
            url=str(data["url"]),
            origin=origin,
            kind=str(data["kind"]),
            process=ProcessRecord.from_json(process) if process else None,
            stop_signal=int(data.get("stop_signal", signal.SIGTERM)),
            log=data.get("log"),
            owner=data.get("owner"),
            leases={k: ProcessRecord.from_json(v) for k, v in (data.get("leases") or {}).items()},
        )


def load_stack(state_dir: Path) -> dict[str, Component]:
    data = read_json(state_dir / STACK_FILE)
    raw = data.get("components", {})
    return {name: Component.from_json(name, entry) for name, entry in raw.items()}


def save_stack(state_dir: Path, components: Mapping[str, Component]) -> None:
    write_json(state_dir / STACK_FILE, {"components": {name: c.to_json() for name, c in components.items()}})
