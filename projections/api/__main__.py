"""`python -m projections.api --port N`: the query API process (uvicorn, one worker)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import uvicorn

from projections.api.app import create_app
from projections.api.cursor import load_secret
from projections.bootstrap import ensure_read_database, jwt_public_key_files, load_read_settings
from projections.limits import RATE_LIMIT_REQUESTS_MAX
from projections.schema import LIVE_SCHEMA
from projections.store import ProjectionStore

#: Requests per subject per minute (default ``projections.limits.RATE_LIMIT_REQUESTS_MAX``), and the Redis key prefix.
ENV_RATE_LIMIT = "RAZAO_QUERY_RATE_LIMIT_REQUESTS_MAX"
ENV_RATE_LIMIT_PREFIX = "RAZAO_QUERY_RATE_LIMIT_KEY_PREFIX"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m projections.api")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--schema", default=LIVE_SCHEMA)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_read_settings()
    ensure_read_database(settings.read_dsn)
    store = ProjectionStore(settings.read_dsn, args.schema, session="razao-query-api")
    try:
        store.ensure()  # the tables exist before the first read, whichever of projector and API starts first
    finally:
        store.close()
    app = create_app(settings.read_dsn, public_key_files=jwt_public_key_files(settings),
                     cursor_secret=load_secret(settings.state_dir), redis_url=settings.redis_url, schema=args.schema,
                     rate_limit_requests_max=int(os.environ.get(ENV_RATE_LIMIT, RATE_LIMIT_REQUESTS_MAX)),
                     rate_limit_prefix=os.environ.get(ENV_RATE_LIMIT_PREFIX, "razao-query"))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
