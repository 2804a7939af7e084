"""`make run`'s supervisor: the stack comes up with the Web UI, Ctrl-C leaves no process behind, a
second run on the same state folder works and still sees the first run's workflows, and a worker killed in
the middle of the March 2020 crash is restarted while the sample loan's guard carries on, placing no order twice."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
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


class LiveStack:
    """scripts/devstack.py as `make run` starts it, its output read as it comes so a test can wait for a line."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("HEDGEGUARD_") and k != "DATABASE_URL"}
        self.env.update(HEDGEGUARD_STATE_DIR=str(tmp_path / "state"),
                        DATABASE_URL=f"sqlite:///{tmp_path / 'state' / 'hg.db'}")
        self.ports = {"grpc": free_port(), "ui": free_port(), "metrics": free_port(),
                      "sim": [free_port(), free_port(), free_port()], "chat": [free_port(), free_port(), free_port()]}
        self.control = f"http://127.0.0.1:{self.ports['sim'][0]}"
        self.proc = subprocess.Popen(
            [sys.executable, "scripts/devstack.py", "--temporal-port", str(self.ports["grpc"]),
             "--ui-port", str(self.ports["ui"]), "--metrics-port", str(self.ports["metrics"]),
             "--sim-ports", *(str(p) for p in self.ports["sim"]), "--chat-ports", *(str(p) for p in self.ports["chat"]),
             *args], cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.output)
            if found:
                return found
            assert self.proc.poll() is None, f"make run ended (status {self.proc.returncode}):\n{self.output}"
            time.sleep(0.2)
        raise AssertionError(f"no {pattern!r} from make run within {timeout:.0f} s:\n{self.output}")

    def get(self, path: str):
        with urllib.request.urlopen(f"{self.control}{path}", timeout=10) as resp:  # noqa: S310 (loopback)
            return json.loads(resp.read())

    def post(self, path: str, body: dict):
        request = urllib.request.Request(f"{self.control}{path}", data=json.dumps(body).encode(),  # noqa: S310
                                         method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 (loopback)
            return json.loads(resp.read())

    def loan_status(self, loan_id: str, *, worker_just_restarted: bool = False) -> dict | None:
        """What a person types to watch the loan: `starter.py loan status ID` (the guard's state query). Right after
        a worker restart the CLI may say, in one line, that no worker answered yet (None): a person tries again."""
        env = {**self.env, "HEDGEGUARD_TEMPORAL_ADDRESS": f"127.0.0.1:{self.ports['grpc']}",
               "HEDGEGUARD_PAPER_CONTROL_URL": self.control}
        out = subprocess.run([sys.executable, "starter.py", "loan", "status", loan_id, "--json"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
        if worker_just_restarted and out.returncode == 1 and "its guard did not answer the status query" in out.stderr:
            assert len(out.stderr.strip().splitlines()) == 1, out.stderr
            return None
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)  # what Ctrl-C delivers
        self.proc.wait(timeout=90)
        self._reader.join(timeout=10)
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its children follow by their parent-death signal
            self.proc.wait()


def ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


@pytest.mark.late
def test_a_worker_killed_mid_crash_is_restarted_and_the_loan_guard_carries_on_placing_nothing_twice(tmp_path: Path):
    stack = LiveStack(tmp_path, "--scenario", "crash-2020")
    try:
        ready = stack.wait_for(r"worker     up: .*\(pid (\d+)\)[\s\S]*Ctrl-C stops everything", 150)
        worker_pid = int(ready.group(1))
        loan_id, account = "L-1", "borrower"  # devstack.SAMPLE_LOAN
        # two bars before the first band crossing (23:23, low 5222), so the crash comes in seconds, not minutes
        stack.post("/control/replay/seek", {"ts": "2020-03-12T23:21:00Z"})
        deadline = time.monotonic() + 60
        while not stack.get(f"/control/orders?account={account}"):
            assert time.monotonic() < deadline, "the crash brought no hedge order within 60 s"
            time.sleep(0.2)

        # the guard is acting on the crash right now: its first order is in, more are on their way
        os.kill(worker_pid, signal.SIGKILL)
        killed_at = datetime.now(UTC)
        stack.wait_for(rf"the worker \(pid {worker_pid}\) exited, killed by SIGKILL, after \d+ s; restarting it in "
                       r"1 s", 30)
        again = stack.wait_for(r"worker     up again \(pid (\d+)\)", 60)
        new_pid = int(again.group(1))
        assert new_pid != worker_pid and alive(new_pid)
        up_again = datetime.now(UTC)
        assert "restarting (restart 1, the last one killed by SIGKILL)" in (
            tmp_path / "state" / "logs" / "worker.log").read_text()

        # it carries on: the guard answers with prices that came after the kill, and it trades the crash again
        deadline = time.monotonic() + 120
        while True:
            view = stack.loan_status(loan_id, worker_just_restarted=True)
            if view is None:
                assert time.monotonic() < deadline, "the guard answered no status query within 120 s of the restart"
                time.sleep(1)
                continue
            later = [o for o in stack.get(f"/control/orders?account={account}") if o["created_ms"] > ms(up_again)]
            later += [o for o in stack.get(f"/control/spot-orders?account={account}") if o["created_ms"] > ms(up_again)]
            if view["price_at"] and datetime.fromisoformat(view["price_at"]) > killed_at and later:
                break
            assert time.monotonic() < deadline, f"the guard did not carry on within 120 s: {view}; {later}"
            time.sleep(1)
        assert view["hedge_started"] is True

        # with the market held still, what the guard thinks it holds is what the venue holds: nothing twice. It
        # may be halfway through a realisation (resting orders replaced every 10 s), and it reads its hedge's
        # position every 15 s
        stack.post("/control/replay/speed", {"speed": 0})
        deadline = time.monotonic() + 120
        while True:
            view = stack.loan_status(loan_id)
            held = sum((Decimal(p["size"]) for p in stack.get(f"/control/positions?venue=bybit&account={account}")
                        if p["symbol"] == "BTCUSDT"), Decimal(0))
            if (view["realising"] is None and Decimal(view["hedge_current_btc"]) == Decimal(view["hedge_target_btc"])
                    and held == -Decimal(view["hedge_current_btc"])):
                break
            assert time.monotonic() < deadline, f"guard and venue disagree after 120 s: venue {held}, guard {view}"
            time.sleep(1)
        perp = stack.get(f"/control/orders?account={account}")
        spot = stack.get(f"/control/spot-orders?account={account}")
        ids = [o["client_order_id"] for o in perp + spot]
        assert [cid for cid, n in Counter(ids).items() if n > 1] == [] and all(ids)
        assert len(perp) > 1

        assert stack.interrupt() == 0, stack.output
        assert "nothing left running" in stack.output
        time.sleep(0.5)
        assert processes_mentioning(str(tmp_path)) == []
    finally:
        stack.close()


@pytest.mark.late
@pytest.mark.parametrize(("child", "said"), [
    ("sim", "the venue simulator (pid {pid}) exited, killed by SIGKILL, after"),
    ("temporal", "the Temporal dev server (pid {pid}) exited, killed by SIGKILL, after"),
], ids=["sim", "temporal"])
def test_the_simulator_or_the_dev_server_dying_stops_everything_and_says_why(tmp_path: Path, child: str, said: str):
    stack = LiveStack(tmp_path)
    try:
        up = stack.wait_for(rf"{child} +up: .*\(pid (\d+)\)[\s\S]*Ctrl-C stops everything", 90)
        pid = int(up.group(1))
        os.kill(pid, signal.SIGKILL)
        stack.proc.wait(timeout=90)
        stack._reader.join(timeout=10)
        assert stack.proc.returncode == 1, stack.output
        assert said.format(pid=pid) in stack.output and "stopping everything" in stack.output
        assert "worker     restarted" not in stack.output and "nothing left running" in stack.output
        assert stack.output.rstrip().endswith(f"make run: stopped because {said.format(pid=pid)[:-len(', after')]} "
                                              "(the end of its log is above).")
        time.sleep(0.5)
        assert processes_mentioning(str(tmp_path)) == []
    finally:
        stack.close()


def test_restarts_back_off_to_a_cap_and_start_over_after_a_worker_stayed_up(monkeypatch):
    spec = importlib.util.spec_from_file_location("devstack", ROOT / "scripts" / "devstack.py")
    devstack = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "devstack", devstack)  # its dataclass looks itself up there
    spec.loader.exec_module(devstack)
    Backoff, exit_reason = devstack.Backoff, devstack.exit_reason

    backoff = Backoff(1.0, 30.0, reset_after=60.0)
    assert [backoff.next(uptime=2) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.next(uptime=61) == 1 and backoff.next(uptime=5) == 2
    assert (exit_reason(-9), exit_reason(-15), exit_reason(3)) == ("killed by SIGKILL", "killed by SIGTERM",
                                                                     "exit status 3")
