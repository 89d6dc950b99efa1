"""`razao bench-pix` runs end to end at a tiny size: the platform starts, webhooks are posted, every Pix is credited
once, and the report has every number docs/benchmarks.md quotes."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import RunRazao


def test_bench_pix_smoke(razao: RunRazao, settings: object, tmp_path: Path) -> None:
    report_path = tmp_path / "bench-pix.json"
    output = razao("bench-pix", "--seconds", "1", "--warmup-seconds", "0.5", "--rate", "60", "--connections", "4",
                   "--pix-per-post", "2", "--duplicate-rate", "0.2", "--json", str(report_path)).stdout
    assert "PIX webhooks" in output and "duplicate credits 0" in output
    report = json.loads(report_path.read_text())
    assert report["duplicate_credits"] == 0 and report["settlement_matches"] is True
    assert report["credited"] == report["unique_pix"] == 90 and report["posts_failed"] == 0
    assert {"p50", "p90", "p99", "max"} <= set(report["latency_ms"]) and report["credit_lag_ms"]["p99"] > 0
    assert report["pix_accepted_per_s"] > 0 and report["timeline"]
