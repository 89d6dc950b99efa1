"""Logging of the Kafka client (kafka-python) in the relay and the projector.

kafka-python 3.0.12, the latest release, can log ``Error receiving network data`` at ERROR with a traceback
(``AttributeError: 'NoneType' object has no attribute 'recv'``) when a client closes while a read is still
scheduled: its own selector reads from a transport it has just closed and set to ``None``. Nothing is lost (the
client is closing), but the traceback reads like a failure of ours, and the e2e tests rightly refuse tracebacks in
service logs. ``quiet_closed_transport_race`` turns exactly that record into a one-line WARNING; every other
record of the library, errors included, is left as it is.
"""

from __future__ import annotations

import logging

#: The logger kafka-python's transports log to.
TRANSPORT_LOGGER = "kafka.net.transport"


class ClosedTransportRace(logging.Filter):
    """Downgrades the library's read-after-close record (see the module doc) to a WARNING without traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, AttributeError) and "(closed)" in record.getMessage() and "recv" in str(exc):
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
            record.msg = f"{record.getMessage()} (a read on a transport the client had closed: {exc})"
            record.args, record.exc_info, record.exc_text = (), None, None
        return True


def quiet_closed_transport_race() -> None:
    """Installs ``ClosedTransportRace`` on kafka-python's transport logger (once per process)."""
    logger = logging.getLogger(TRANSPORT_LOGGER)
    if not any(isinstance(f, ClosedTransportRace) for f in logger.filters):
        logger.addFilter(ClosedTransportRace())
