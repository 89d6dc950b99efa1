"""The compiled hot path (ADR 0020): the same log byte for byte, and a build that is used only when it matches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import ledger
import ledger.model
from ledger import native

SCENARIO = Path(__file__).with_name("native_scenario.py")


def run_scenario(**env: str) -> dict[str, Any]:
    base = {k: v for k, v in os.environ.items() if k != native.ENV_SWITCH}
    done = subprocess.run([sys.executable, str(SCENARIO)], env={**base, **env}, capture_output=True,
                          text=True, timeout=120, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_compiled_and_interpreted_writers_store_the_same_log_byte_for_byte() -> None:
    compiled = run_scenario()
    if not compiled["compiled"]:
        pytest.skip(f"no usable compiled build here ({native.inspect().reason}); scripts/bootstrap builds it")
    interpreted = run_scenario(RAZAO_NATIVE="off")
    assert compiled["model_file"].endswith(".so")
    assert interpreted["compiled"] is False and interpreted["model_file"] == "model.py"
    assert compiled["events"] == interpreted["events"] == 37
    for key in ("stored_digest", "chain_head", "fingerprint", "outcomes"):
        assert compiled[key] == interpreted[key], key
    # The scenario's refusals, so a scenario that refused nothing could not pass unnoticed.
    assert {"LEDGER_IDEMPOTENCY_CONFLICT", "LEDGER_INSUFFICIENT_FUNDS", "LEDGER_LINKED_BATCH_FAILED",
            "LEDGER_ACCOUNT_BALANCE_NOT_ZERO"} <= set(compiled["outcomes"])


@pytest.fixture
def build_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv(native.ENV_SWITCH, raising=False)
    monkeypatch.setenv(native.ENV_DIR, str(tmp_path / "native"))
    return tmp_path / "native"


def fake_build(directory: Path, **manifest: Any) -> None:
    (directory / "ledger").mkdir(parents=True)
    for name in [native.stem(m) for m in native.COMPILED_MODULES] + ["_compiled__mypyc"]:
        (directory / "ledger" / f"{name}.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    native.write_manifest(directory, "mypyc test", native.source_digests())
    if manifest:
        written = json.loads((directory / native.MANIFEST).read_text())
        written.update(manifest)
        (directory / native.MANIFEST).write_text(json.dumps(written))


def test_a_build_that_matches_the_sources_goes_first_on_the_package_path(build_dir: Path) -> None:
    fake_build(build_dir)
    path = ["/src/ledger"]
    status = native.activate(path)
    assert status.active and status.compiler == "mypyc test"
    assert path == [str(build_dir / "ledger"), "/src/ledger"]


def test_no_build_leaves_the_sources(build_dir: Path) -> None:
    path = ["/src/ledger"]
    status = native.activate(path)
    assert not status.active and "not built" in status.reason
    assert path == ["/src/ledger"]


def test_a_source_changed_since_the_build_is_never_shadowed(build_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    fake_build(build_dir)
    manifest = json.loads((build_dir / native.MANIFEST).read_text())
    manifest["sources"]["ledger.model"] = "0" * 64
    (build_dir / native.MANIFEST).write_text(json.dumps(manifest))
    path = ["/src/ledger"]
    with caplog.at_level("WARNING", logger="ledger.native"):
        status = native.activate(path)
    assert not status.active and status.reason == "sources changed since the build: ledger.model"
    assert path == ["/src/ledger"]
    assert "ledger runs interpreted: sources changed since the build" in caplog.text  # an operator is told


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"interpreter": "cpython-312-3.12.0-linux"}, "built for cpython-312"),
        ({"sources": "not a mapping"}, "unreadable manifest"),
        ({"compiler": None, "interpreter": 3}, "unreadable manifest"),
    ],
)
def test_a_build_for_another_interpreter_or_a_bad_manifest_is_not_used(
    build_dir: Path, change: dict[str, Any], reason: str
) -> None:
    fake_build(build_dir, **change)
    status = native.inspect()
    assert not status.active and reason in status.reason


def test_an_unreadable_manifest_or_a_missing_or_extra_module_is_not_used(build_dir: Path) -> None:
    fake_build(build_dir)
    # A module compiled by an earlier build but no longer listed would shadow its source: not used either.
    (build_dir / "ledger" / "writer.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    assert native.inspect().reason == "build incomplete or mixed: unexpected writer"
    (build_dir / "ledger" / "model.cpython-311-x86_64-linux-gnu.so").unlink()
    assert native.inspect().reason == "build incomplete or mixed: missing model; unexpected writer"
    manifest = json.loads((build_dir / native.MANIFEST).read_text())
    manifest["sources"]["ledger.writer"] = "0" * 64
    (build_dir / native.MANIFEST).write_text(json.dumps(manifest))
    assert native.inspect().reason.startswith("built for other modules: ")
    (build_dir / native.MANIFEST).write_text("{")
    assert native.inspect().reason.startswith("unreadable manifest")


def test_the_switch_turns_a_good_build_off(build_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_build(build_dir)
    monkeypatch.setenv(native.ENV_SWITCH, "off")
    assert native.inspect() == native.NativeStatus(False, "RAZAO_NATIVE=off", build_dir)


def test_the_real_build_is_the_one_this_process_runs() -> None:
    if not ledger.NATIVE.active:
        pytest.skip(f"no usable compiled build here ({ledger.NATIVE.reason}); scripts/bootstrap builds it")
    # (mypyc names the file from the group's library, one level deeper than it is: compare the start and the end.)
    loaded = str(ledger.model.__file__)
    assert loaded.startswith(str(ledger.NATIVE.directory / "ledger")) and loaded.endswith(".so")


def test_a_starting_writer_says_which_code_it_runs(caplog: pytest.LogCaptureFixture) -> None:
    from ledger.application import LedgerApplication, ledger_env
    from ledger.inmemory import InMemoryWriterLease, RecorderTransferLookup
    from ledger.writer import LedgerWriter

    app = LedgerApplication(env=ledger_env())
    with caplog.at_level("INFO", logger="ledger.writer"):
        writer = LedgerWriter(app, InMemoryWriterLease("says-its-code"), RecorderTransferLookup(app.recorder)).start()
    writer.stop()
    expected = f"compiled ({ledger.NATIVE.compiler})" if ledger.NATIVE.active else "interpreted"
    assert f"ledger writer started at position 0; ledger code {expected}" in caplog.text
