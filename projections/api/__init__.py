"""The read-only query API (FastAPI, GET only, its own process): balances, statements, transfers, holds, audits.

Wiring lives in ``app.py`` (``create_app``); nothing here connects to anything at import time. Errors are
``application/problem+json`` (RFC 9457) with a stable ``code`` (``problems.py``).
"""
