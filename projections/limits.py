"""Every limit of the read side, in one place (TIGER_STYLE), with their relationships asserted at import time."""

from typing import Final

#: Events a projector applies in one Postgres transaction (one Kafka poll at most).
PROJECTOR_BATCH_EVENTS_MAX: Final = 2_000
#: How long one Kafka poll waits for records; bounds how late a stop request or a halt is noticed.
PROJECTOR_POLL_MS_MAX: Final = 100
#: After a database error the projector retries the batch, waiting at most this long between attempts.
PROJECTOR_RETRY_WAIT_S_MAX: Final = 5.0
#: When a gap in the chain is seen, the partition is re-read from the beginning at most this often.
PROJECTOR_RESCAN_INTERVAL_S: Final = 5.0
#: At start, how long the projector waits for the relay to create the ledger topic before subscribing anyway.
#: Tansu creates a topic that a metadata request names, whatever the client asks, with its default partition
#: count; the relay then deletes and recreates it, and a consumer subscribed to the first one could stay on it.
PROJECTOR_TOPIC_WAIT_S: Final = 30.0
PROJECTOR_TOPIC_POLL_S: Final = 0.5

#: A rebuild reads the event store in pages of this many records and flushes its rows every this many events.
REBUILD_PAGE_EVENTS_MAX: Final = 10_000
REBUILD_FLUSH_EVENTS_MAX: Final = 100_000

#: Query API pages: the default and the most a client may ask for (larger asks are a 400, not a silent clamp).
PAGE_SIZE_DEFAULT: Final = 50
PAGE_SIZE_MAX: Final = 500
#: Read-your-writes: how long a read may wait for the projection to reach `min_position`, by default and at most.
MIN_POSITION_WAIT_MS_DEFAULT: Final = 2_000
MIN_POSITION_WAIT_MS_MAX: Final = 10_000
#: Log positions are Postgres bigints.
POSITION_MAX: Final = 2**63 - 1
#: Account ids one SSE stream may follow, and events buffered per stream before a slow client is dropped.
STREAM_ACCOUNTS_MAX: Final = 100
STREAM_QUEUE_EVENTS_MAX: Final = 10_000
#: A keep-alive comment is sent on an idle stream this often, so proxies and clients see a live connection.
STREAM_KEEPALIVE_S: Final = 15.0
#: Rows one hub query reads to fan out balance changes to streams (the rest follow on the next round).
STREAM_FANOUT_ROWS_MAX: Final = 5_000
#: Rate limit per subject: requests per window.
RATE_LIMIT_REQUESTS_MAX: Final = 1_200
RATE_LIMIT_WINDOW_S: Final = 60
#: Redis calls of the rate limiter: a slow Redis must not stall reads (the limiter then fails open).
RATE_LIMIT_REDIS_TIMEOUT_S: Final = 0.25
#: Tokens: the Authorization header length and the clock skew tolerated on exp/iat.
TOKEN_LENGTH_MAX: Final = 4_096
TOKEN_LEEWAY_S: Final = 5
#: Connections of the query API's pool.
QUERY_POOL_CONNECTIONS_MAX: Final = 8
#: A query API statement runs at most this long.
QUERY_STATEMENT_TIMEOUT_MS: Final = 5_000

assert 0 < PAGE_SIZE_DEFAULT <= PAGE_SIZE_MAX
assert 0 < MIN_POSITION_WAIT_MS_DEFAULT <= MIN_POSITION_WAIT_MS_MAX < QUERY_STATEMENT_TIMEOUT_MS * 10
assert REBUILD_PAGE_EVENTS_MAX <= REBUILD_FLUSH_EVENTS_MAX
assert PROJECTOR_BATCH_EVENTS_MAX <= REBUILD_FLUSH_EVENTS_MAX
assert 0 < RATE_LIMIT_REDIS_TIMEOUT_S < 1
