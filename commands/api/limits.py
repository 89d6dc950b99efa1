"""Every limit of the command API, in one place (TIGER_STYLE), with their relationships asserted.

Units come last in the names. The ledger's own limits (key length, batch size, amounts) stay in
``ledger.limits``; the API's are tighter where an HTTP client should not reach the ledger's ceiling.
"""

from typing import Final

from ledger.limits import IDEMPOTENCY_KEY_LENGTH_MAX as LEDGER_KEY_LENGTH_MAX
from ledger.limits import LINKED_TRANSFERS_MAX, REFERENCE_LENGTH_MAX, TRANSFERS_PER_COMMAND_MAX

#: The Idempotency-Key header: 1 to 64 visible ASCII characters (a UUID fits with room to spare).
IDEMPOTENCY_KEY_LENGTH_MAX: Final = 64
#: A token's ``sub``: the party id (a UUID, 36 characters) for customers, a short name for staff and services.
SUBJECT_LENGTH_MAX: Final = 48
#: Linked batches over HTTP: far below the ledger's 8,190 so one request stays small and quick to validate.
BATCH_TRANSFERS_MAX: Final = 1_000
#: Digits of the largest batch index, as appended to a member's key (``sub:key:999``).
BATCH_INDEX_DIGITS_MAX: Final = len(str(BATCH_TRANSFERS_MAX - 1))
#: A request body: a full batch of transfers is about 250 bytes each.
BODY_BYTES_MAX: Final = 512 * 1024
#: The Authorization header: a JWT of ours is about 300 bytes; anything near this is an attack.
TOKEN_LENGTH_MAX: Final = 4_096
#: Verified tokens kept in memory (LRU) so a client's repeated token costs a dict lookup, not a signature check.
TOKEN_CACHE_ENTRIES_MAX: Final = 50_000
#: Clock skew tolerated on ``exp``, ``nbf`` and ``iat``.
TOKEN_LEEWAY_S: Final = 5
#: How long a request waits for the ledger writer before answering 503 (the outcome is then unknown).
LEDGER_WAIT_S_MAX: Final = 30.0
#: Single transfers the gateway gathers into one writer command before sending it without waiting for the end of
#: the event loop's pass (ADR 0024): the writer starts on a group while the loop is still building the next.
#: 32, 64 and 128 measured alike within this VM's noise at 128 to 256 concurrent requests; 64 was best in most runs.
GATHERED_TRANSFERS_MAX: Final = 64
#: Rate-limit calls to Redis: past this the in-process limiter takes over. Not tighter: under a CPU-saturated
#: event loop a healthy Redis answer can be read late, and a false fallback loses the shared counters.
REDIS_TIMEOUT_S: Final = 1.0
#: Connections to Redis for rate limits; each carries one pipeline of coalesced checks at a time.
REDIS_CONNECTIONS_MAX: Final = 16
#: While Redis is down, how often the limiter tries it again.
REDIS_RETRY_INTERVAL_S: Final = 5.0
#: The readiness probe's round trip through the writer must answer within this.
READINESS_TIMEOUT_S: Final = 2.0

# A namespaced ledger key is `sub:key` or, for a batch member, `sub:key:index`; it must fit the ledger's key.
assert SUBJECT_LENGTH_MAX + 1 + IDEMPOTENCY_KEY_LENGTH_MAX + 1 + BATCH_INDEX_DIGITS_MAX <= LEDGER_KEY_LENGTH_MAX
assert BATCH_TRANSFERS_MAX <= LINKED_TRANSFERS_MAX
assert 1 <= GATHERED_TRANSFERS_MAX <= TRANSFERS_PER_COMMAND_MAX
# A full batch whose references are all of the maximal length still fits in a body.
assert BATCH_TRANSFERS_MAX * (REFERENCE_LENGTH_MAX + 300) < BODY_BYTES_MAX
assert REFERENCE_LENGTH_MAX < BODY_BYTES_MAX
assert 0 < REDIS_TIMEOUT_S < REDIS_RETRY_INTERVAL_S
