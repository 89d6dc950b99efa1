"""The command API: the write side of Razão over HTTP (FastAPI on uvicorn, one process with the ledger writer).

Wiring lives in ``bootstrap.py`` (``create_app``); nothing here connects to anything at import time.
"""
