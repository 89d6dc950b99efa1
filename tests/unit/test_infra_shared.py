"""What both APIs and both background processes share in ``infra``: the bearer-token rules and the status server."""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry, Counter

from infra import bearer_tokens as tokens
from infra.processes import free_port
from infra.status_server import serve_status

KEY = Ed25519PrivateKey.generate()
PARTY = "7d1f9a52-3c1e-4f7b-9a0e-2b6c8d4e1f30"


def token(**claims: object) -> str:
    now = int(time.time())
    base = {"sub": PARTY, "role": "investor", "aud": tokens.AUDIENCE, "iss": tokens.ISSUER, "iat": now, "exp": now + 60}
    return jwt.encode({**base, **claims}, KEY, algorithm="EdDSA")


def test_a_good_token_decodes_and_each_bad_one_says_why() -> None:
    claims = tokens.decode_claims(token(), KEY.public_key(), "EdDSA", leeway_s=5)
    assert tokens.subject_and_role(claims) == (PARTY, "investor")
    now = int(time.time())
    for bad, reason in (({"exp": now - 60}, "expired"), ({"aud": "elsewhere"}, "audience"),
                        ({"iss": "mallory"}, "issuer"), ({"nbf": now + 600}, "not valid yet"),
                        ({"iat": "yesterday"}, "iat")):
        with pytest.raises(tokens.TokenRejected, match=reason):
            tokens.decode_claims(token(**bad), KEY.public_key(), "EdDSA", leeway_s=5)
    unsigned = jwt.encode({"sub": PARTY}, KEY, algorithm="EdDSA")
    with pytest.raises(tokens.TokenRejected, match="lacks the 'role' claim"):
        tokens.decode_claims(unsigned, KEY.public_key(), "EdDSA", leeway_s=5)
    with pytest.raises(tokens.TokenRejected, match="signature"):
        tokens.decode_claims(token(), Ed25519PrivateKey.generate().public_key(), "EdDSA", leeway_s=5)


def test_the_algorithm_is_read_before_verifying_and_customers_are_party_ids() -> None:
    assert tokens.token_algorithm(token(), 4096) == "EdDSA"
    for malformed in ("", "not.a.jwt", "é" * 10, "x" * 5000):
        with pytest.raises(tokens.TokenRejected, match="malformed"):
            tokens.token_algorithm(malformed, 4096)
    with pytest.raises(tokens.TokenRejected, match="party id"):
        tokens.subject_and_role({"sub": PARTY.upper(), "role": "borrower"})
    assert tokens.subject_and_role({"sub": "ops-1", "role": "operator"}) == ("ops-1", "operator")
    with pytest.raises(tokens.TokenRejected, match="strings"):
        tokens.subject_and_role({"sub": 7, "role": "operator"})
    assert tokens.bearer_token("Bearer  abc ") == "abc"
    for header in (None, "", "Basic abc", "Bearer "):
        with pytest.raises(tokens.TokenRejected):
            tokens.bearer_token(header)


def test_verified_tokens_are_kept_until_they_expire_least_recently_used_out() -> None:
    cache: tokens.VerifiedTokens[str] = tokens.VerifiedTokens(entries_max=2, leeway_s=5)
    cache.put("a", "alice", exp=100.0)
    cache.put("b", "bob", exp=100.0)
    assert cache.get("a", now=50.0) == "alice"  # "b" is now the least recently used
    cache.put("c", "carol", exp=100.0)
    assert len(cache) == 2 and cache.get("b", now=50.0) is None and cache.get("c", now=50.0) == "carol"
    assert cache.get("a", now=104.0) == "alice"  # within the leeway
    with pytest.raises(tokens.TokenRejected, match="expired"):
        cache.get("a", now=105.0)
    assert cache.get("a", now=50.0) is None  # forgotten once expired
    assert (cache.hits, cache.misses) == (3, 2)


def test_the_status_server_serves_health_metrics_and_nothing_else() -> None:
    registry = CollectorRegistry()
    Counter("razao_test_things", "Things counted", registry=registry).inc(3)
    healthy = [True]
    server = serve_status(free_port("127.0.0.1"), registry, lambda: (200, {"status": "ok"}) if healthy[0]
                          else (503, {"status": "stalled"}), name="test-status")
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
            assert response.status == 200 and "razao_test_things_total 3.0" in response.read().decode()
        with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
            assert json.loads(response.read()) == {"status": "ok"}
        healthy[0] = False
        for path, status in (("/health", 503), ("/anything", 404)):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"{base}{path}", timeout=5)
            assert refused.value.code == status, path
    finally:
        server.shutdown()
        server.server_close()


def test_the_status_server_listens_where_razao_status_host_says(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = CollectorRegistry()
    server = serve_status(free_port("127.0.0.1"), registry, lambda: (200, {}), name="test-status-default")
    try:
        assert server.server_address[0] == "127.0.0.1"  # not reachable from other hosts unless asked
    finally:
        server.shutdown()
        server.server_close()
    monkeypatch.setenv("RAZAO_STATUS_HOST", "0.0.0.0")
    server = serve_status(free_port("127.0.0.1"), registry, lambda: (200, {}), name="test-status-any")
    try:
        assert server.server_address[0] == "0.0.0.0"
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_address[1]}/health", timeout=5) as response:
            assert response.status == 200
    finally:
        server.shutdown()
        server.server_close()


def test_only_kafka_pythons_read_after_close_race_is_quieted(caplog: pytest.LogCaptureFixture) -> None:
    from infra.kafka_logging import TRANSPORT_LOGGER, quiet_closed_transport_race

    quiet_closed_transport_race()
    quiet_closed_transport_race()  # installed once
    logger = logging.getLogger(TRANSPORT_LOGGER)
    assert sum(type(f).__name__ == "ClosedTransportRace" for f in logger.filters) == 1

    def library_logs(transport: str, exc: BaseException) -> None:
        try:
            raise exc
        except BaseException:
            logger.exception("%s: Error receiving network data closing socket", transport)

    with caplog.at_level(logging.DEBUG, logger=TRANSPORT_LOGGER):
        library_logs("<KafkaTCPTransport [none] (closed)>", AttributeError("'NoneType' object has no attribute 'recv'"))
        library_logs("<KafkaTCPTransport [127.0.0.1:9092] (connected)>", ConnectionResetError("reset by peer"))
        library_logs("<KafkaTCPTransport [none] (closed)>", AttributeError("'NoneType' object has no attribute 'send'"))
    # Only this logger's records: a Kafka client of an earlier test may still log from its own thread.
    race, reset, other = [r for r in caplog.records if r.name == TRANSPORT_LOGGER]
    assert race.levelno == logging.WARNING and race.exc_info is None and "(closed)" in race.getMessage()
    assert "a read on a transport the client had closed" in race.getMessage()
    assert reset.levelno == logging.ERROR and reset.exc_info is not None  # a real network error stays an error
    assert other.levelno == logging.ERROR and other.exc_info is not None
