"""Hostile clients against the real server (``python -m service`` on loopback, the built-in demo bundle),
through the probes of ``benchmarks.hardening`` with bounded loops: memory under concurrent large bodies,
slow clients, mid-upload disconnects, batch overload and the end of the shutdown grace period."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import hardening

SPEECH = {"SER_REQUIRE_SPEECH": "true"}


def test_concurrent_large_bodies_stay_within_the_byte_budget(tmp_path: Path) -> None:
    figures = hardening.probe_memory(tmp_path, bodies=60, mb=24.0, env=SPEECH)
    assert figures["all_typed"], figures["outcomes"]  # every answer a typed 4xx or 503, none cut off
    assert set(figures["outcomes"]) <= {"415 unsupported_format", "503 overloaded"}, figures
    assert figures["outcomes"].get("503 overloaded", 0) > 0, "the budget refused nothing"
    assert figures["peak_over_idle_mb"] < 400, figures
    assert figures["next_request"] == "200"


def test_slow_clients_are_cut_off_and_normal_requests_keep_their_latency(tmp_path: Path) -> None:
    env = {**SPEECH, "SER_HEADER_TIMEOUT_S": "2", "SER_BODY_TIMEOUT_S": "2"}
    figures = hardening.probe_slow(tmp_path, clients=200, seconds=10.0, env=env)
    assert figures["closed"] == 200, figures
    for kind in ("headers", "body"):
        assert figures["by_kind"][kind]["status_lines"] == {"HTTP/1.1 408 Request Timeout": 100}, figures
        assert figures["by_kind"][kind]["closed_after_s_max"] < 6, figures
    assert figures["latency_during_max_s"] < max(1.0, 5 * figures["latency_before_p50_s"]), figures


def test_mid_upload_disconnects_are_no_errors(tmp_path: Path) -> None:
    figures = hardening.probe_disconnect(tmp_path, clients=50, env=SPEECH)
    assert figures["http_5xx_added"] == 0, figures
    assert figures["disconnects_counted"] == 50, figures
    assert figures["tracebacks_added"] == 0 and figures["never_retrieved"] == 0, figures
    assert figures["log_lines_added"] <= 2 * 50, figures  # an access line each, and little else
    assert figures["next_request"] == "200"


def test_an_overloaded_batch_gets_a_top_level_503(tmp_path: Path) -> None:
    figures = hardening.probe_batch(tmp_path, batches=20, files=16, env=SPEECH)
    outcomes = figures["outcomes"]
    assert set(outcomes) <= {"200 all ok", "503 overloaded, Retry-After 1"}, outcomes
    assert outcomes.get("200 all ok", 0) >= 1 and sum(outcomes.values()) == 20, outcomes


@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_requests_left_at_the_end_of_the_grace_period_get_json_503s(tmp_path: Path) -> None:
    figures = hardening.probe_shutdown(tmp_path, requests=48, env=SPEECH)
    assert figures["all_json"], figures
    assert figures["outcomes"].get("503 shutting_down", 0) > 0, figures
    assert set(figures["outcomes"]) <= {"200", "503 shutting_down"}, figures
    assert figures["retry_after_on_503"], figures
    assert figures["utterances_run"] > 0, "the probe saw no batch at all"
    assert figures["utterances_run_after_last_answer"] == 0, figures
    assert figures["tracebacks_in_log"] == 0 and figures["exit_status"] == 0, figures
