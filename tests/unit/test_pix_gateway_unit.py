"""The gateway's pieces that need no PSP: the circuit gate's state machine, configuration, routes, services."""

from __future__ import annotations

import threading
import time

import pybreaker
import pytest

from infra import pix_gateway
from infra.pix_gateway import CircuitGate, InMemoryPaymentRoutes, PspConfig, _Transient, load_psp_configs
from infra.sandbox_psp import services as sandbox_services
from infra.settings import Settings
from ledger import pix
from ledger.ports import PaymentStatus, RefundState

RESET_S = 0.2


def failing() -> None:
    raise _Transient("boom", reached=False)


def make_gate(events: list[tuple[str, str | None, str]] | None = None) -> CircuitGate:
    return CircuitGate("primary", fail_max=2, reset_timeout_s=RESET_S,
                       listeners=[lambda *event: (events if events is not None else []).append(event)])


def test_the_gate_opens_after_fail_max_then_admits_one_trial() -> None:
    events: list[tuple[str, str | None, str]] = []
    gate = make_gate(events)
    for _ in range(2):
        with pytest.raises(_Transient):
            gate.guard(failing)
    assert gate.state == "open" and not gate.admits_new_work()
    with pytest.raises(pybreaker.CircuitBreakerError):
        gate.guard(lambda: "not called")
    time.sleep(RESET_S + 0.05)
    assert gate.admits_new_work()
    assert gate.guard(lambda: "trial") == "trial"
    assert gate.state == "closed"
    assert events == [("primary", "closed", "open"), ("primary", "open", "half-open"),
                      ("primary", "half-open", "closed")]


def test_a_failed_trial_opens_the_gate_again() -> None:
    gate = make_gate()
    for _ in range(2):
        with pytest.raises(_Transient):
            gate.guard(failing)
    time.sleep(RESET_S + 0.05)
    with pytest.raises(_Transient):
        gate.guard(failing)
    assert gate.state == "open" and not gate.admits_new_work()


def test_half_open_lets_one_trial_through_at_a_time() -> None:
    gate = make_gate()
    for _ in range(2):
        with pytest.raises(_Transient):
            gate.guard(failing)
    time.sleep(RESET_S + 0.05)
    inside, release = threading.Event(), threading.Event()

    def slow_trial() -> str:
        inside.set()
        release.wait(5)
        return "ok"

    results: list[str] = []
    trial = threading.Thread(target=lambda: results.append(gate.guard(slow_trial)))
    trial.start()
    assert inside.wait(5)
    assert gate.state == "half-open" and not gate.admits_new_work()
    with pytest.raises(pybreaker.CircuitBreakerError, match="trial"):
        gate.guard(lambda: "second")
    release.set()
    trial.join(5)
    assert results == ["ok"] and gate.state == "closed"


def test_calls_run_outside_the_breaker_lock() -> None:
    # pybreaker's own call() would hold its lock for the whole request and serialise every call to a PSP.
    gate = make_gate()
    inside = threading.Barrier(2, timeout=5)
    done: list[str] = []

    def both_inside_at_once() -> str:
        inside.wait()  # raises BrokenBarrierError if the two calls cannot be inside together
        return "ok"

    threads = [threading.Thread(target=lambda: done.append(gate.guard(both_inside_at_once))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert done == ["ok", "ok"]


def test_a_result_is_never_lost_when_the_breaker_opened_meanwhile() -> None:
    gate = make_gate()
    inside, release = threading.Event(), threading.Event()

    def slow_success() -> str:
        inside.set()
        release.wait(5)
        return "sent"

    results: list[str] = []
    worker = threading.Thread(target=lambda: results.append(gate.guard(slow_success)))
    worker.start()
    assert inside.wait(5)
    for _ in range(2):
        with pytest.raises(_Transient):
            gate.guard(failing)
    assert gate.state == "open"
    release.set()
    worker.join(5)
    assert results == ["sent"]


def test_errors_that_are_not_transient_do_not_count() -> None:
    gate = make_gate()
    for _ in range(5):
        with pytest.raises(KeyError):
            gate.guard(lambda: {}["x"])
    assert gate.state == "closed" and gate.fail_counter == 0


# ---- configuration, routes, services --------------------------------------------------------------------------


def test_psp_config_checks_its_relationships() -> None:
    good = {"name": "primary", "base_url": "http://127.0.0.1:1", "client_id": "c", "client_secret": "s",
            "pix_key": "k"}
    PspConfig(**good)
    for bad in ({"name": "Primary"}, {"base_url": "127.0.0.1:1"}, {"attempts_max": 0}, {"attempts_max": 11},
                {"read_timeout_s": 20.0}, {"deadline_s": 61.0}, {"backoff_max_s": 10.0}, {"breaker_fail_max": 0}):
        with pytest.raises(ValueError, match=r"primary|PSP"):
            PspConfig(**{**good, **bad})
    assert "s3cr3t" not in repr(PspConfig(**{**good, "client_secret": "s3cr3t"}))


def test_configs_default_to_the_sandboxes_and_follow_the_environment() -> None:
    primary, secondary = load_psp_configs({})
    assert (primary.base_url, secondary.base_url) == ("http://127.0.0.1:8701", "http://127.0.0.1:8702")
    assert primary.pix_key == sandbox_services.PRIMARY.pix_key
    assert secondary.webhook_secret == sandbox_services.SECONDARY.webhook_secret
    primary, secondary = load_psp_configs({"RAZAO_PSP_PRIMARY_URL": "https://psp.example", "RAZAO_PSP_DEADLINE_S": "5",
                                           "RAZAO_PSP_SECONDARY_DEADLINE_S": "4",
                                           "RAZAO_SANDBOX_PSP_SECONDARY_PORT": "9702"})
    assert (primary.base_url, primary.deadline_s) == ("https://psp.example", 5.0)
    assert (secondary.base_url, secondary.deadline_s) == ("http://127.0.0.1:9702", 4.0)


def test_in_memory_routes_pin_once_and_move_by_compare_and_set() -> None:
    routes = InMemoryPaymentRoutes()
    assert routes.psp_for("p1") is None
    assert routes.pin("p1", "primary") == "primary"
    assert routes.pin("p1", "secondary") == "primary"
    assert not routes.move("p1", "secondary", "primary")
    assert routes.move("p1", "primary", "secondary") and routes.psp_for("p1") == "secondary"


def test_razao_up_gets_two_sandboxes_on_their_own_ports(tmp_path: object) -> None:
    specs = sandbox_services.services(Settings("dsn", "redis://x", "k:1", tmp_path))  # type: ignore[arg-type]
    assert [spec.name for spec in specs] == ["sandbox_psp_primary", "sandbox_psp_secondary"]
    assert specs[0].health_url == "http://127.0.0.1:8711/_sandbox/health"
    assert len({*map(str, (8701, 8702, 8711, 8712))} & {arg for spec in specs for arg in spec.argv}) == 4
    for spec in specs:
        assert not any("secret" in arg for arg in spec.argv)  # secrets go by environment, not by argv
        assert set(spec.env) == {"RAZAO_SANDBOX_PSP_CLIENT_SECRET", "RAZAO_SANDBOX_PSP_WEBHOOK_SECRET"}


def test_port_enums_agree_with_the_domain() -> None:
    assert [s.value for s in RefundState] == [s.value for s in pix.RefundStatus]
    assert {s.value for s in PaymentStatus} == {"CONFIRMED", "FAILED", "PENDING", "UNKNOWN"}
    assert pix_gateway.VALOR_CENTAVOS_MAX == pix.PIX_VALOR_CENTAVOS_MAX


def test_breaker_state_recorder_keeps_the_last_state_per_psp(tmp_path: object) -> None:
    import json
    from pathlib import Path

    state_dir = Path(str(tmp_path))
    record = pix_gateway.breaker_state_recorder(state_dir)
    gate = CircuitGate("primary", fail_max=1, reset_timeout_s=RESET_S, listeners=[record])
    with pytest.raises(_Transient):
        gate.guard(failing)
    recorded = json.loads((state_dir / pix_gateway.BREAKER_STATE_FILE).read_text())
    assert recorded["primary"]["state"] == "open" and recorded["primary"]["previous"] == "closed"
