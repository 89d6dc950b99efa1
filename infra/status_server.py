"""The ``/health`` and ``/metrics`` endpoints of a background process (the relay, the projector).

A plain threaded HTTP server on 127.0.0.1, or on the address in ``RAZAO_STATUS_HOST`` (``0.0.0.0`` in a container,
so that Prometheus and the orchestrator's probes can reach it). ``/metrics`` is the process's Prometheus registry,
``/health`` whatever its ``health`` callback says (an HTTP status and a JSON body), anything else a 404. The APIs
serve the same two routes through their own web framework; this is for the processes that have none.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

ENV_STATUS_HOST = "RAZAO_STATUS_HOST"
STATUS_HOST_DEFAULT = "127.0.0.1"

#: ``health()``: the HTTP status (200 healthy, 503 not) and the JSON body of ``/health``.
Health = Callable[[], tuple[int, dict[str, Any]]]


def serve_status(port: int, registry: CollectorRegistry, health: Health, *, name: str) -> ThreadingHTTPServer:
    """Starts the server on a daemon thread called ``name``; ``shutdown()`` it to stop."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                body, status, kind = generate_latest(registry), 200, CONTENT_TYPE_LATEST
            elif self.path == "/health":
                status, document = health()
                body, kind = json.dumps(document).encode(), "application/json"
            else:
                body, status, kind = b"not found", 404, "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:  # scraped every few seconds: not worth a log line each
            pass

    server = ThreadingHTTPServer((os.environ.get(ENV_STATUS_HOST) or STATUS_HOST_DEFAULT, port), Handler)
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    return server
