"""Is a server there, and is it the kind of server we expect? Short, bounded checks used by the stack.

Each server gets two questions. "Does anything listen at that address?" decides between using what is
there and starting our own. "Does it answer like Postgres / Redis / Kafka?" then catches a listener that is
something else, or a real server that refuses us (wrong password): falling back to an embedded server there
would hide a configuration mistake, so those cases are errors.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import psycopg
import redis
from psycopg.conninfo import conninfo_to_dict

CONNECT_TIMEOUT_S = 1.0
KAFKA_PROBE_TIMEOUT_S = 2.0
KAFKA_RESPONSE_BYTES_MAX = 1 << 20
POLL_INTERVAL_S = 0.1

# Only these are replaced by a server of our own when nothing answers there; a remote address never is.
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost"})


@dataclass(frozen=True)
class Endpoint:
    """A TCP host and port, or a Unix socket path (then `host` is the path and `port` is 0)."""

    host: str
    port: int

    @property
    def is_unix(self) -> bool:
        return self.host.startswith("/")

    @property
    def is_local(self) -> bool:
        return self.is_unix or self.host in LOCAL_HOSTS

    def __str__(self) -> str:
        return self.host if self.is_unix else f"{self.host}:{self.port}"


def postgres_endpoint(dsn: str) -> Endpoint:
    params = conninfo_to_dict(dsn)
    host = str(params.get("host") or "/var/run/postgresql").split(",")[0]
    port = int(str(params.get("port") or 5432).split(",")[0])
    if host.startswith("/"):
        return Endpoint(f"{host}/.s.PGSQL.{port}", 0)
    return Endpoint(host, port)


def redis_endpoint(url: str) -> Endpoint:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return Endpoint(parts.path, 0)
    return Endpoint(parts.hostname or "127.0.0.1", parts.port or 6379)


def kafka_endpoint(bootstrap: str) -> Endpoint:
    first = bootstrap.split(",", maxsplit=1)[0].strip()
    host, sep, port = first.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"Kafka bootstrap {bootstrap!r} is not host:port")
    return Endpoint(host, int(port))


def accepts_connections(endpoint: Endpoint, timeout_s: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether something listens at the endpoint (a connect succeeds)."""
    family = socket.AF_UNIX if endpoint.is_unix else socket.AF_INET
    address: str | tuple[str, int] = endpoint.host if endpoint.is_unix else (endpoint.host, endpoint.port)
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(address)
        except OSError:
            return False
    return True


def postgres_error(dsn: str) -> str | None:
    """None when we can log in to the database `dsn` names, else why not."""
    try:
        with psycopg.connect(dsn, connect_timeout=max(1, round(CONNECT_TIMEOUT_S))) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return None


def redis_error(url: str) -> str | None:
    """None when the Redis at `url` answers PING, else why not."""
    client = redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=CONNECT_TIMEOUT_S)
    try:
        client.ping()
    except redis.RedisError as exc:
        return str(exc) or type(exc).__name__
    finally:
        client.close()
    return None


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        chunks += chunk
    return bytes(chunks)


def _metadata_v0_request(correlation_id: int) -> bytes:
    client_id = b"razao-probe"
    # Request header v1 (api_key 3 = Metadata, version 0), then an empty topic array: "all topics" in v0.
    body = struct.pack(">hhih", 3, 0, correlation_id, len(client_id)) + client_id + struct.pack(">i", 0)
    return struct.pack(">i", len(body)) + body


def _parse_brokers(payload: bytes, correlation_id: int) -> list[tuple[str, int]]:
    got_id, count = struct.unpack_from(">ii", payload, 0)
    if got_id != correlation_id:
        raise ValueError("correlation id mismatch")
    offset, brokers = 8, []
    for _ in range(count):
        _node, host_len = struct.unpack_from(">ih", payload, offset)
        offset += 6
        host = payload[offset : offset + host_len].decode()
        offset += host_len
        (port,) = struct.unpack_from(">i", payload, offset)
        offset += 4
        brokers.append((host, port))
    return brokers


def kafka_brokers(endpoint: Endpoint, timeout_s: float = KAFKA_PROBE_TIMEOUT_S) -> list[tuple[str, int]] | None:
    """The brokers a Kafka Metadata request at `endpoint` advertises, or None if nothing there speaks Kafka.

    A raw Metadata v0 request rather than a client library: it is bounded by one timeout, logs nothing, and
    tells "not Kafka" (garbage or silence) apart from "Kafka" in one round trip.
    """
    correlation_id = 0x52415A
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout_s) as sock:
            sock.sendall(_metadata_v0_request(correlation_id))
            (size,) = struct.unpack(">i", _read_exactly(sock, 4))
            if not 8 <= size <= KAFKA_RESPONSE_BYTES_MAX:
                return None
            return _parse_brokers(_read_exactly(sock, size), correlation_id)
    except (OSError, ValueError, struct.error, UnicodeDecodeError):
        return None


def wait_for(check: Callable[[], bool], timeout_s: float, interval_s: float = POLL_INTERVAL_S) -> bool:
    """Poll `check` until it returns True or `timeout_s` passes; return its last answer."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)
    return True
