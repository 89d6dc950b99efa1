"""The platform services of `commands` that `razao up` starts (the `razao.services` entry point).

The command API listens on 127.0.0.1:8080, or on the port in ``RAZAO_API_PORT``; when 8080 is taken by
something else, on the port chosen before (kept in ``<state_dir>/api.json``) or a free one. The URL is written
to that file too, so that `razao demo` and other tools find the running API.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from infra.platform import ServiceSpec
from infra.processes import free_port, port_is_free, read_json, write_json
from infra.settings import Settings

API_SERVICE_NAME = "api"
API_HOST = "127.0.0.1"
API_PORT_DEFAULT = 8080
ENV_API_PORT = "RAZAO_API_PORT"
ENV_API_URL = "RAZAO_API_URL"
ENV_PIX_ENABLED = "RAZAO_PIX_ENABLED"
API_STATE_FILE = "api.json"
#: The first start rebuilds the ledger state from the log; leave it time on a large ledger.
API_READY_TIMEOUT_S = 120.0
PROBE_TIMEOUT_S = 1.0
SERVICE_IDENTITY = "razao-command-api"


def services(settings: Settings) -> list[ServiceSpec]:
    port = api_port(settings.state_dir)
    url = f"http://{API_HOST}:{port}"
    write_json(settings.state_dir / API_STATE_FILE, {"url": url})
    argv = (sys.executable, "-m", "commands.api", "--host", API_HOST, "--port", str(port))
    # The platform runs with PIX on, against the sandbox PSPs `razao up` starts (infra.sandbox_psp.services).
    env = {ENV_PIX_ENABLED: os.environ.get(ENV_PIX_ENABLED, "true")}
    return [ServiceSpec(name=API_SERVICE_NAME, argv=argv, env=env, health_url=f"{url}/readyz",
                        ready_timeout_s=API_READY_TIMEOUT_S)]


def api_port(state_dir: Path) -> int:
    explicit = os.environ.get(ENV_API_PORT)
    if explicit:
        return int(explicit)
    recorded = _recorded_port(state_dir)
    for candidate in (recorded, API_PORT_DEFAULT):
        if candidate and (port_is_free(API_HOST, candidate) or _serves_our_api(candidate)):
            return candidate
    return free_port(API_HOST)


def api_url(state_dir: Path) -> str:
    """Where the command API of this state directory listens (``RAZAO_API_URL`` first)."""
    return os.environ.get(ENV_API_URL) or str(read_json(state_dir / API_STATE_FILE).get("url") or
                                              f"http://{API_HOST}:{API_PORT_DEFAULT}")


def _recorded_port(state_dir: Path) -> int | None:
    url = str(read_json(state_dir / API_STATE_FILE).get("url") or "")
    port = url.rpartition(":")[2]
    return int(port) if port.isdigit() else None


def _serves_our_api(port: int) -> bool:
    try:
        # Only http://127.0.0.1:<int> is ever opened here.
        with urllib.request.urlopen(f"http://{API_HOST}:{port}/healthz", timeout=PROBE_TIMEOUT_S) as response:
            return bool(json.loads(response.read()).get("service") == SERVICE_IDENTITY)
    except (urllib.error.URLError, OSError, ValueError):
        return False
