"""Background processes that razao starts and must later stop, and the JSON files that remember them.

A PID alone is not an identity: once a process exits, the kernel hands its number to the next process. So a
`ProcessRecord` also keeps the boot id and the process start time (in clock ticks since boot, from
/proc/<pid>/stat). `is_alive` and `stop` compare all three, which is what guarantees that `razao down` never
signals a stranger that inherited a recycled PID.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STOP_TIMEOUT_S = 15.0
KILL_TIMEOUT_S = 5.0
POLL_INTERVAL_S = 0.05
LOG_TAIL_LINES = 20


class ProcessError(RuntimeError):
    """A process could not be started or stopped."""


@dataclass(frozen=True)
class ProcessRecord:
    """Who a started process is: enough to find it again, and to be sure it is still the same one."""

    pid: int
    start_ticks: int
    boot_id: str
    argv: tuple[str, ...]
    # True when the process leads its own process group (we start everything with start_new_session), so a
    # signal reaches the helpers it forked too. False for servers that manage their own children (Postgres).
    group: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "start_ticks": self.start_ticks,
            "boot_id": self.boot_id,
            "argv": list(self.argv),
            "group": self.group,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProcessRecord:
        return cls(
            pid=int(data["pid"]),
            start_ticks=int(data["start_ticks"]),
            boot_id=str(data["boot_id"]),
            argv=tuple(str(arg) for arg in data["argv"]),
            group=bool(data["group"]),
        )


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """The state letter and start time of `pid`, or None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may itself contain spaces or ')', so split after
    # the last ')'. What follows starts at field 3 (state); field 22 (starttime) is 19 places later.
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[19])


def read_cmdline(pid: int) -> list[str]:
    """The command line of a running process (empty if it has gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def describe(pid: int, argv: Sequence[str] | None = None, *, group: bool) -> ProcessRecord:
    """Record the identity of a running process; `argv` defaults to its current command line.

    Pass `argv` for a process just spawned: until its exec completes, /proc shows the parent's command line.
    """
    stat = _proc_stat(pid)
    if stat is None:
        raise ProcessError(f"process {pid} exited before it could be recorded")
    command = tuple(argv) if argv is not None else tuple(read_cmdline(pid))
    return ProcessRecord(pid=pid, start_ticks=stat[1], boot_id=boot_id(), argv=command, group=group)


def is_alive(record: ProcessRecord) -> bool:
    """Whether the very process in `record` is still running (a zombie counts as gone: it has exited)."""
    if record.boot_id != boot_id():
        return False
    stat = _proc_stat(record.pid)
    return stat is not None and stat[0] != "Z" and stat[1] == record.start_ticks


def spawn(
    argv: Sequence[str], log_path: Path, *, env: Mapping[str, str] | None = None, group: bool = True
) -> ProcessRecord:
    """Start `argv` detached from our session, with stdout and stderr appended to `log_path`.

    A new session keeps the process alive after the razao command that started it exits, and keeps a Ctrl-C
    in the terminal from reaching it.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        try:
            child = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                start_new_session=True,
            )
        except OSError as exc:
            raise ProcessError(f"cannot start {argv[0]}: {exc}") from exc
    return describe(child.pid, argv, group=group)


def _send(record: ProcessRecord, sig: int) -> None:
    try:
        if record.group:
            os.killpg(record.pid, sig)
        else:
            os.kill(record.pid, sig)
    except ProcessLookupError:
        pass  # it exited between our identity check and the signal: that is what we wanted


def _wait_gone(record: ProcessRecord, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while is_alive(record):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL_S)
    return True


def stop(record: ProcessRecord, *, sig: int = signal.SIGTERM, timeout_s: float = STOP_TIMEOUT_S) -> str:
    """Stop the process in `record` if it is still that process; return what happened, for the user.

    Sends `sig`, waits up to `timeout_s`, then SIGKILL. Raises ProcessError if even SIGKILL did not work.
    """
    if not is_alive(record):
        return "was not running"
    _send(record, sig)
    if _wait_gone(record, timeout_s):
        return "stopped"
    _send(record, signal.SIGKILL)
    if _wait_gone(record, KILL_TIMEOUT_S):
        return f"killed (did not stop within {timeout_s:.0f}s)"
    raise ProcessError(f"process {record.pid} ({record.argv[0]}) survived SIGKILL")


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR, as servers use, so that a closed connection in TIME_WAIT does not count as taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str) -> int:
    """A port nothing listens on right now (another process may still take it before we do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The end of a log file, indented, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"    ({path} does not exist)"
    tail = text.splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in tail) or f"    ({path} is empty)"


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in `path`, or an empty one if the file does not exist."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProcessError(f"{path} is not valid JSON ({exc}); fix or delete it") from exc
    if not isinstance(data, dict):
        raise ProcessError(f"{path} should hold a JSON object; fix or delete it")
    return data


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Replace `path` atomically, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` so concurrent razao commands take turns with a state file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
