"""`make run`'s supervisor: the stack comes up with the Web UI, Ctrl-C leaves no process behind, and a
second run on the same state folder works and still sees the first run's workflows."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}/stat").exists() else "X"
    return state != "Z"


def processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if text in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def health_runs(grpc_port: int, expected: int) -> int:
    """HealthCheckWorkflow runs the server knows (visibility is eventually consistent: poll a little)."""
    deadline, count = time.monotonic() + 10, -1
    while time.monotonic() < deadline:
        out = subprocess.run([str(Path(sys.executable).parent / "temporal"), "workflow", "count", "--address",
                              f"127.0.0.1:{grpc_port}", "--query", "WorkflowType='HealthCheckWorkflow'"],
                             capture_output=True, text=True, timeout=30).stdout
        count = int(re.search(r"Total: (\d+)", out).group(1))
        if count >= expected:
            break
        time.sleep(0.3)
    return count


def run_stack(env: dict[str, str], ports: dict[str, int], runs_expected: int) -> tuple[list[int], str]:
    """Start the stack, check it, Ctrl-C it; return the child pids it reported and its output."""
    proc = subprocess.Popen(
        [sys.executable, "scripts/devstack.py", "--temporal-port", str(ports["grpc"]), "--ui-port", str(ports["ui"]),
         "--metrics-port", str(ports["metrics"]), "--sim-ports", *(str(p) for p in ports["sim"]),
         "--chat-ports", *(str(p) for p in ports["chat"])],
        cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        out.append(line)
        if "Ctrl-C stops everything" in line or proc.poll() is not None:
            break
    text = "".join(out)
    assert "Ctrl-C stops everything" in text, text
    with urllib.request.urlopen(f"http://localhost:{ports['ui']}/", timeout=5) as resp:  # noqa: S310
        assert resp.status == 200
    status_env = {**env, "HEDGEGUARD_TEMPORAL_ADDRESS": f"127.0.0.1:{ports['grpc']}",
                  "HEDGEGUARD_PAPER_CONTROL_URL": f"http://127.0.0.1:{ports['sim'][0]}"}
    status = subprocess.run([sys.executable, "starter.py", "status", "--json"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, env=status_env)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["store_current"] is True and report["paper_venues"]["reachable"] is True
    assert health_runs(ports["grpc"], runs_expected) == runs_expected  # earlier runs' workflows survive
    pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", text)]
    proc.send_signal(signal.SIGINT)  # what Ctrl-C delivers
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest
    return pids, text + rest


@pytest.mark.late
def test_make_run_starts_stops_clean_and_restarts_on_the_same_state(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEDGEGUARD_") and k != "DATABASE_URL"}
    env.update(HEDGEGUARD_STATE_DIR=str(tmp_path / "state"), DATABASE_URL=f"sqlite:///{tmp_path / 'state' / 'hg.db'}")
    ports = {"grpc": free_port(), "ui": free_port(), "metrics": free_port(),
             "sim": [free_port(), free_port(), free_port()], "chat": [free_port(), free_port(), free_port()]}

    first_pids, first = run_stack(env, ports, runs_expected=1)
    assert len(first_pids) == 3 and "temporal   up" in first and "worker     up" in first and "sim        up" in first
    assert "chat       up" in first and (tmp_path / "state" / "sim-smtp-ca.pem").read_text().startswith("-----BEGIN")
    worker_log = (tmp_path / "state" / "logs" / "worker.log").read_text()
    assert "alerts: slack #hedgeguard-alerts, telegram 1 chat(s), email 1 address(es)" in worker_log
    assert "Telegram commands on" in worker_log
    assert "nothing left running" in first
    time.sleep(0.5)
    assert [p for p in first_pids if alive(p)] == []
    assert processes_mentioning(str(tmp_path)) == []
    assert (tmp_path / "state" / "temporal.db").exists()

    second_pids, second = run_stack(env, ports, runs_expected=2)
    assert set(second_pids).isdisjoint(first_pids)
    time.sleep(0.5)
    assert [p for p in second_pids if alive(p)] == [] and processes_mentioning(str(tmp_path)) == []


def test_a_busy_port_is_refused_with_a_clear_line(tmp_path: Path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = held.getsockname()[1]
        env = {**os.environ, "HEDGEGUARD_STATE_DIR": str(tmp_path)}
        result = subprocess.run([sys.executable, "scripts/devstack.py", "--temporal-port", str(busy),
                                 "--ui-port", str(free_port()), "--metrics-port", str(free_port()),
                                 "--sim-ports", str(free_port()), str(free_port()), str(free_port()),
                                 "--chat-ports", str(free_port()), str(free_port()), str(free_port())],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert f"port(s) {busy} on 127.0.0.1 already in use" in result.stderr
