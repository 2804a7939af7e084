"""bench.latency end to end on one loan crossing into CAUTION twice: between the crossings every hedge comes off
(or the program stops with an error), and each crossing is one sample. It checks the figures are there, never
how fast they are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import latency

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]


@pytest.mark.late
def test_one_loan_two_crossings_two_samples(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "latency.json"
    assert latency.main(["--loans", "1", "--crossings", "2", "--timeout", "30", "--json", str(out)]) == 0
    (run,) = json.loads(out.read_text())["runs"]
    assert (run["loans"], run["hedged"], run["crossings"], run["samples"]) == (1, 1, 2, 2)
    assert 0 < run["p50_ms"] <= run["p99_ms"] <= run["max_ms"]
    assert run["all_hedged_s"] == pytest.approx(run["max_ms"] / 1000, abs=0.001)
    printed = capsys.readouterr()
    assert "crossing 2/2: hedge orders received 1/1" in printed.err
    assert printed.out.splitlines()[1].split()[:4] == ["loans", "crossings", "samples", "hedged"]


def test_crossings_below_one_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        latency.main(["--loans", "1", "--crossings", "0"])
    assert exc.value.code == 2
    assert "--crossings must be at least 1" in capsys.readouterr().err
