"""bench.scale end to end on 3 loans: the program runs, hedges every loan and writes every figure. It checks
that the figures are there, never how fast they are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import scale

FIELDS = ("loans", "enrol_per_s", "enrol_s", "worker_rss_at_rest_mib", "server_rss_at_rest_mib", "all_hedged_s", "hedged",
          "p50_ms", "p95_ms", "p99_ms", "max_ms", "worker_rss_peak_mib")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_three_loans_all_hedged_with_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "scale.json"
    assert scale.main(["--loans", "3", "--rest", "1", "--timeout", "60", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert set(FIELDS) <= set(figures)
    assert figures["loans"] == 3 and figures["hedged"] == 3
    assert isinstance(figures["all_hedged_s"], int | float) and figures["all_hedged_s"] > 0
    for key in FIELDS:
        assert isinstance(figures[key], int | float), key
    assert set(figures["phases"]) == {"accounts", "enrol", "rest", "hedge"}
    for name, phase in figures["phases"].items():
        assert all(value >= 0 for key, value in phase.items() if key.endswith("_pct")), (name, phase)
    printed = capsys.readouterr()
    assert "all hedged after the tick" in printed.out
    assert "loans hedged (first order received) 3/3" in printed.err


def test_threads_that_end_or_are_replaced_inside_a_phase_never_make_its_core_wait_negative() -> None:
    """The 10,000-loan run printed a wait of -50.3 % for the bench process over its rest: the enrolment's threads had
    ended, and a process-wide sum of the live threads' counts fell."""
    before = {101: 4.0, 102: 9.0, 103: 2.0}
    after = {101: 4.5, 103: 0.25, 104: 0.5}  # 102 ended; 103 is a new thread under a reused id; 104 started
    assert scale.waited_s(before, after) == pytest.approx(0.5 + 0.25 + 0.5)
    assert scale.waited_s(after, after) == 0
