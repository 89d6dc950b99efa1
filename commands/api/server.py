"""Runs the command API: one uvicorn process (uvloop, httptools) with the single ledger writer (ADR 0004)."""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn

from commands.api.bootstrap import create_app, load_api_settings
from commands.api.settings import UnsafeConfiguration

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
#: Pending connections the kernel queues while the loop is busy; bursts of thousands of clients are expected.
BACKLOG_CONNECTIONS_MAX = 4096
GRACEFUL_SHUTDOWN_S = 10
#: The webhook URL template registered at the PSPs (they append ``/pix``), relative to this server.
WEBHOOK_PATH = "/v1/webhooks/psp/{psp}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--forwarded-allow-ips", default=None,
                        help="trust X-Forwarded-For from these proxies (the client address is used for rate limits)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


def serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_api_settings()
    if settings.pix_enabled and not settings.pix_webhook_url:
        # PSPs post to this server itself unless a proxy's public URL is configured (RAZAO_PIX_WEBHOOK_URL).
        settings = settings.model_copy(update={"pix_webhook_url": f"http://{args.host}:{args.port}{WEBHOOK_PATH}"})
    try:
        app = create_app(settings)
    except UnsafeConfiguration as exc:
        print(f"razao api: {exc}", file=sys.stderr)
        return 2
    config = uvicorn.Config(
        app, host=args.host, port=args.port, loop="uvloop", http="httptools", lifespan="on",
        access_log=False, log_level=args.log_level, backlog=BACKLOG_CONNECTIONS_MAX, server_header=False,
        proxy_headers=args.forwarded_allow_ips is not None, forwarded_allow_ips=args.forwarded_allow_ips,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    server = uvicorn.Server(config)
    server.run()
    # uvicorn returns normally when the lifespan failed to start (e.g. another process owns the writer).
    return 0 if server.started else 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m commands.api", description="Run the Razão command API.")
    add_arguments(parser)
    return serve(parser.parse_args(argv))
