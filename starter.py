"""hedgeguard operator CLI. Every command prints a table for people, or JSON with --json.

    python starter.py status                 is Temporal up, is a worker polling, is the store migrated
    python starter.py config                 the effective settings (no secrets)
    python starter.py hedge list             hedges in the store
    python starter.py hedge ledger ID        a hedge's ledger events
    python starter.py hedge verify ID        rebuild a hedge from its ledger and compare
    python starter.py hedge state ID         a running hedge: target, position, open order, timers
    python starter.py hedge pause|resume ID  stop / restart placing orders (pause cancels the open order)
    python starter.py hedge force-close ID   close now, reduce-only, at urgent pricing (even when paused)
    python starter.py hedge set-policy ID --replace-after-s 20 --urgency urgent ...
    python starter.py loan enrol --loan-id ID --account NAME [--collateral-btc X --loan-usdt Y] [--target ...]
                                             guard a Bybit loan (paper mode with amounts opens it on the simulator)
    python starter.py loan list              enrolled loans: LTV, band, hedge target and position
    python starter.py loan status ID         one loan: LTV, debt, collateral, hedge, treasury, bands
    python starter.py loan pause|resume ID   stop / restart trading and moving money (it keeps watching and alerting)
    python starter.py loan force-close ID    close the loan's hedge now (and pause)
    python starter.py loan set-bands ID --caution 46 ...   validated by the guard; a bad value changes nothing
    python starter.py loan unenrol ID [--wait]   close the hedge, then stop guarding
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import re
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, NoReturn

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.exceptions import WorkflowAlreadyStartedError

from activities.ccxt_venue import BybitVenue
from activities.loan_ops import LoanOps
from activities.store import Store, StoreError
from activities.temporal_client import TemporalUnreachable, connect
from activities.venue import VenueAuthError, VenueError
from activities.venues import ensure_paper_account, paper_credentials
from models.health import HealthReport, ReadinessRequest
from models.loan_guard import LOAN_ID_PATTERN, BandSettings, LoanGuardInput, LoanView, loan_workflow_id
from models.settings import _ACCOUNT_RE as ACCOUNT_NAME
from models.settings import Settings, SettingsError, load_settings
from risk.loan import Band, band_for, enrolment_problems, ltv_pct, risk_price
from workflows.health import HealthCheckWorkflow
from workflows.hedge import HedgeWorkflow
from workflows.loan_guard import LoanGuardWorkflow


class UserError(Exception):
    """A mistake or a state the operator can fix: printed as one line, exit status 1."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


# -- output -----------------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def emit(args: argparse.Namespace, data: Any, table: Sequence[Sequence[Any]] | str) -> None:
    if args.json:
        print(json.dumps(_plain(data), indent=2, sort_keys=False))
    elif isinstance(table, str):
        print(table)
    else:
        print(format_table(table))


def format_table(rows: Sequence[Sequence[Any]]) -> str:
    if len(rows) <= 1:
        return "(none)" if not rows else "  ".join(map(str, rows[0])) + "\n(none)"
    cells = [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


# -- commands ---------------------------------------------------------------------------------------
async def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    client = await connect(settings)
    pollers = await client.workflow_service.describe_task_queue(DescribeTaskQueueRequest(
        namespace=settings.temporal_namespace, task_queue=TaskQueue(name=settings.task_queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW))
    if not pollers.pollers:
        raise UserError(f"Temporal is up at {settings.temporal_address}, but no worker polls task queue "
                        f"{settings.task_queue!r}: start one with `python worker.py` (make run does)")
    report: HealthReport = await client.execute_workflow(
        HealthCheckWorkflow.run, ReadinessRequest(requested_by="starter.py status"),
        id=f"health-{uuid.uuid4()}", task_queue=settings.task_queue,
        execution_timeout=timedelta(seconds=30), result_type=HealthReport)
    r = report.readiness
    data = {"temporal": settings.temporal_address, "namespace": settings.temporal_namespace,
            "task_queue": settings.task_queue, "workers_polling": len(pollers.pollers), **r.model_dump(mode="json"),
            "store_current": r.store_current}
    accounts = ", ".join(f"{a.venue}:{a.account} ({'keys ok' if a.keys_present else 'NO KEYS'})"
                         for a in r.accounts) or "none configured"
    table = [["item", "value"],
             ["Temporal", f"{settings.temporal_address} namespace {settings.temporal_namespace}"],
             ["worker", f"{len(pollers.pollers)} polling {settings.task_queue!r}; answered from "
                        f"{r.worker_host} pid {r.worker_pid}"],
             ["mode", r.mode],
             ["store", f"{r.store_backend} schema {r.store_revision} "
                       f"({'current' if r.store_current else 'NEEDS MIGRATION to ' + r.store_head_revision})"],
             ["accounts", accounts]]
    if r.paper_venues is not None:
        table.append(["paper venues", f"{'up' if r.paper_venues.reachable else 'DOWN'}: {r.paper_venues.detail}"])
    emit(args, data, table)
    healthy = r.store_current and (r.paper_venues is None or r.paper_venues.reachable)
    return 0 if healthy else 1


def cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    view = settings.public_view()
    emit(args, view, [["setting", "value"]] + [[k, json.dumps(v) if isinstance(v, dict) else v]
                                                for k, v in view.items()])
    return 0


def _store(settings: Settings) -> Store:
    store = Store(settings.database_url)
    if store.schema_revision() is None:
        raise UserError(f"the store at {settings.public_view()['database_url']} has no schema yet: "
                        "start the worker once (it migrates), or check DATABASE_URL")
    return store


def cmd_hedge_list(args: argparse.Namespace, settings: Settings) -> int:
    hedges = _store(settings).list_hedges(book=args.book, status=args.status)
    fields = ["id", "book", "exposure_id", "venue", "account", "symbol", "side", "status", "target_size",
              "current_size", "notional", "realised_pnl", "unrealised_pnl"]
    data = [h.model_dump(include=set(fields) | {"opened_at", "closed_at"}) for h in hedges]
    emit(args, data, [fields] + [[getattr(h, f) for f in fields] for h in hedges])
    return 0


def cmd_hedge_ledger(args: argparse.Namespace, settings: Settings) -> int:
    store = _store(settings)
    if store.get_hedge(args.hedge_id) is None:
        raise UserError(f"no hedge {args.hedge_id!r} (see `starter.py hedge list`)")
    events = store.events(args.hedge_id)
    fields = ["id", "type", "venue_ts", "size_delta", "price", "fee", "cost_basis_delta", "realised_pnl_delta",
              "venue_event_id"]
    data = [e.model_dump(exclude={"venue_payload"}) for e in events]
    emit(args, data, [fields] + [[getattr(e, f) for f in fields] for e in events])
    return 0


def cmd_hedge_verify(args: argparse.Namespace, settings: Settings) -> int:
    store = _store(settings)
    try:
        problems = store.verify(args.hedge_id)
    except StoreError as exc:
        raise UserError(str(exc)) from None
    rebuilt = store.rebuild(args.hedge_id)
    data = {"hedge_id": args.hedge_id, "consistent": not problems, "problems": problems,
            "rebuilt": {"size": rebuilt.size, "cost_basis": rebuilt.cost_basis,
                        "realised_pnl": rebuilt.realised_pnl, "notional": rebuilt.notional}}
    text = (f"hedge {args.hedge_id}: ledger rebuild matches (size {rebuilt.size}, cost basis {rebuilt.cost_basis}, "
            f"realised PnL {rebuilt.realised_pnl})" if not problems
            else f"hedge {args.hedge_id}: MISMATCH\n  " + "\n  ".join(problems))
    emit(args, data, text)
    return 0 if not problems else 1


def hedge_workflow_id(hedge_id: str) -> str:
    return f"hedge-{hedge_id}"


async def _hedge_handle(settings: Settings, hedge_id: str):
    from temporalio.service import RPCError, RPCStatusCode

    client = await connect(settings)
    handle = client.get_workflow_handle(hedge_workflow_id(hedge_id))
    try:
        description = await handle.describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise UserError(f"no hedge workflow {hedge_workflow_id(hedge_id)!r} (see `starter.py hedge list`)") from None
        raise
    if description.status is None or description.status.name != "RUNNING":
        raise UserError(f"hedge {hedge_id} is not running ({description.status.name.lower()})")
    return handle


def _view_table(view) -> list[list[Any]]:
    order = view.open_order
    fill = view.last_fill
    return [["field", "value"], ["hedge", view.hedge_id], ["status", view.status.value],
            ["position", f"{view.current} {view.symbol} on {view.venue} (target {view.target} {view.side.value})"],
            ["open order", f"{order.side} {order.qty} @ {order.price} {order.time_in_force} filled {order.filled}"
                           if order else "none"],
            ["last fill", f"{fill.side} {fill.qty} @ {fill.price}" if fill else "none"],
            ["PnL", f"realised {view.realised_pnl}, unrealised {view.unrealised_pnl}"],
            ["paused", "yes" if view.paused else "no"], ["urgency", view.urgency.value],
            ["next timer", f"{view.next_timer} at {view.next_timer_at:%H:%M:%S}" if view.next_timer_at else "none"],
            ["blocked", view.blocked or "no"]]


async def cmd_hedge_state(args: argparse.Namespace, settings: Settings) -> int:
    handle = await _hedge_handle(settings, args.hedge_id)
    view = await handle.query(HedgeWorkflow.state)
    emit(args, view.model_dump(mode="json"), _view_table(view))
    return 0


def operator(reason: str = "operator") -> str:
    """Who sent a command, as the action summary tells it: `starter.py (alice)`, plus a reason if given."""
    who = f"starter.py ({getpass.getuser()})"
    return who if reason == "operator" else f"{who}: {reason}"


async def cmd_hedge_signal(args: argparse.Namespace, settings: Settings) -> int:
    handle = await _hedge_handle(settings, args.hedge_id)
    if args.hedge_command == "pause":
        await handle.signal(HedgeWorkflow.pause, operator())
    elif args.hedge_command == "resume":
        await handle.signal(HedgeWorkflow.resume, operator())
    else:
        await handle.signal(HedgeWorkflow.force_close, operator(args.reason))
    done = {"pause": "paused", "resume": "resumed", "force-close": "closing"}[args.hedge_command]
    emit(args, {"hedge_id": args.hedge_id, "sent": args.hedge_command}, f"hedge {args.hedge_id}: {done}")
    return 0


async def cmd_hedge_set_policy(args: argparse.Namespace, settings: Settings) -> int:
    from temporalio.client import WorkflowUpdateFailedError

    changes = {k: v for k, v in {"replace_after_s": args.replace_after_s, "fill_check_s": args.fill_check_s,
                                 "expiry_s": args.expiry_s, "price_band_bps": args.price_band_bps,
                                 "max_order_qty": args.max_order_qty, "urgency": args.urgency}.items() if v is not None}
    if not changes:
        raise UserError("nothing to change: give at least one option (see `hedge set-policy --help`)")
    handle = await _hedge_handle(settings, args.hedge_id)
    try:
        policy = await handle.execute_update(HedgeWorkflow.set_policy, changes)
    except WorkflowUpdateFailedError as err:
        raise UserError(str(err.cause.message if err.cause else err)) from None
    emit(args, policy.model_dump(mode="json"), [["policy", "value"]] + [
        [k, v] for k, v in policy.model_dump(mode="json").items() if k != "ladder"])
    return 0


# -- loans ------------------------------------------------------------------------------------------
BAND_OPTIONS = ("target", "caution", "danger", "critical", "hysteresis", "repay_below", "safe_below",
                "multiplier_caution", "multiplier_danger", "multiplier_critical")
LOAN_VENUE, LOAN_SYMBOL = "bybit", "BTCUSDT"
RUNNING_LOANS = 'WorkflowType="LoanGuardWorkflow" AND ExecutionStatus="Running"'
QUERY_TIMEOUT = timedelta(seconds=10)


def _number(text: str) -> Decimal:
    """argparse type for amounts and bands: a finite decimal number (Decimal itself raises no ValueError)."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value.is_finite():
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def loan_ui_url(settings: Settings, loan_id: str) -> str:
    return f"http://localhost:8233/namespaces/{settings.temporal_namespace}/workflows/{loan_workflow_id(loan_id)}"


def _band_changes(args: argparse.Namespace) -> dict[str, Decimal]:
    return {name: getattr(args, name) for name in BAND_OPTIONS if getattr(args, name) is not None}


def _check_account(settings: Settings, account: str) -> None:
    """Paper mode trades any account name the settings accept (the simulator creates it on first use); live
    mode only a bybit account listed in HEDGEGUARD_ACCOUNTS that has its keys."""
    known = settings.accounts.get(LOAN_VENUE, [])
    if settings.mode == "live":
        if account not in known or not settings.has_credentials(LOAN_VENUE, account):
            raise UserError(f"unknown account {account!r}: live mode guards loans of the bybit accounts in "
                            f"HEDGEGUARD_ACCOUNTS that have keys ({', '.join(known) or 'none configured'})")
    elif not ACCOUNT_NAME.match(account):
        raise UserError(f"unknown account {account!r}: an account name is lower-case letters, digits, - or _ "
                        "(up to 63), e.g. loan-desk")


def _enrol_amounts(args: argparse.Namespace) -> tuple[Decimal, Decimal] | None:
    given = (args.collateral_btc, args.loan_usdt)
    if given.count(None) == 1:
        raise UserError("give both --collateral-btc and --loan-usdt (a new paper loan), or neither (an existing loan)")
    for option, value, unit in (("--collateral-btc", args.collateral_btc, "BTC"), ("--loan-usdt", args.loan_usdt, "USDT")):
        if value is not None and value <= 0:
            raise UserError(f"{option} must be more than 0 {unit} (got {value})")
    if args.reserve_usdt < 0:
        raise UserError(f"--reserve-usdt must be 0 or more (got {args.reserve_usdt})")
    return None if args.collateral_btc is None else (args.collateral_btc, args.loan_usdt)


def _bybit_client(settings: Settings, account: str) -> BybitVenue:
    """The account's Bybit client, built as VenuePool builds it but without creating a paper account: enrolment
    writes nothing until every check has passed."""
    if settings.mode == "paper":
        return BybitVenue.build(account, paper_credentials(LOAN_VENUE, account), base_url=settings.paper_url(LOAN_VENUE),
                                rate_limit=False, timeout_ms=settings.venue_timeout_ms)
    return BybitVenue.build(account, settings.credentials(LOAN_VENUE, account), base_url=None, rate_limit=True,
                            timeout_ms=settings.venue_timeout_ms)


async def _simulator(settings: Settings, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    import aiohttp

    url = f"{settings.paper_control_url}{path}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            async with http.request(method, url, json=body) as resp:
                data = await resp.json()
                if resp.status >= 400:
                    raise UserError(f"the simulator refused {method} {path}: {data.get('error')}")
                return data
    except aiohttp.ClientError as exc:
        raise UserError(f"simulator control API at {settings.paper_control_url} unreachable ({exc}); "
                        "is `python -m sim` running?") from None


async def _refuse_if_enrolled(client: Client, loan_id: str, account: str) -> None:
    """One guard per loan id, and one per account: Bybit keeps one flexible USDT loan per account, and two guards
    on it would each hedge all of it."""
    from temporalio.service import RPCError, RPCStatusCode

    try:
        description = await client.get_workflow_handle(loan_workflow_id(loan_id)).describe()
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
    else:
        if description.status == WorkflowExecutionStatus.RUNNING:
            raise UserError(f"loan {loan_id} is already enrolled (see `starter.py loan status {loan_id}`)")
    async for execution in client.list_workflows(RUNNING_LOANS):
        started = None
        async for event in client.get_workflow_handle(execution.id, run_id=execution.run_id).fetch_history_events():
            started = event.workflow_execution_started_event_attributes
            break
        if started is None or not started.input.payloads:
            continue
        [other] = await client.data_converter.decode(started.input.payloads, [LoanGuardInput])
        if other.venue == LOAN_VENUE and other.account == account:
            raise UserError(f"account {account!r} is already guarded by loan {other.loan_id}: Bybit keeps one loan per "
                            f"account (see `starter.py loan status {other.loan_id}`)")


async def _enrolled_loan(settings: Settings, venue: BybitVenue, account: str, amounts: tuple[Decimal, Decimal] | None,
                         last: Decimal, index: Decimal, bands: BandSettings) -> tuple[Decimal, Decimal, bool]:
    """(collateral BTC, debt USDT, opened on the simulator) of the loan to guard, once it passes every check."""
    def refuse_unsafe(collateral: Decimal, debt: Decimal) -> None:
        problems = enrolment_problems(collateral_btc=collateral, debt_usdt=debt, last=last, index=index,
                                      bands=bands.bands())
        if problems:
            raise UserError("not enrolled: " + "; ".join(problems))

    if settings.mode == "paper" and amounts is not None:
        collateral, debt = amounts
        refuse_unsafe(collateral, debt)
        current = [loan for loan in await _simulator(settings, "GET", "/control/loans")
                   if loan["account"] == account and loan["status"] == "active"]
        if current:
            raise UserError(f"bybit account {account!r} already has a loan on the simulator (collateral "
                            f"{current[0]['collateral_btc']} BTC, debt {current[0]['debt']} USDT): enrol it without "
                            "--collateral-btc and --loan-usdt")
        try:
            await ensure_paper_account(settings, LOAN_VENUE, account)
        except VenueError as err:
            raise UserError(str(err)) from None
        await _simulator(settings, "POST", "/control/loans",
                         {"account": account, "collateral_btc": str(collateral), "debt_usdt": str(debt)})
        return collateral, debt, True
    store = Store(settings.database_url)
    try:
        snapshot = await LoanOps(store, venue).read()
    except VenueAuthError as err:
        hint = (" (the simulator has no such account: give --collateral-btc and --loan-usdt to open a paper loan)"
                if settings.mode == "paper" else "")
        raise UserError(f"cannot read bybit account {account!r}'s loan: {err}{hint}") from None
    except VenueError as err:
        raise UserError(f"cannot read bybit account {account!r}'s loan: {err}") from None
    finally:
        store.close()
    debt = snapshot.principal + snapshot.interest
    if snapshot.collateral_btc <= 0 and debt <= 0:
        raise UserError(f"bybit account {account!r} has no ongoing USDT loan against BTC collateral"
                        + (": give --collateral-btc and --loan-usdt to open a paper loan" if settings.mode == "paper" else ""))
    if amounts is not None:  # live: the operator's figures must be Bybit's
        collateral, loan_usdt = amounts
        if collateral != snapshot.collateral_btc:
            raise UserError(f"--collateral-btc {collateral} but Bybit reports {snapshot.collateral_btc} BTC of collateral "
                            f"on account {account!r}")
        if loan_usdt not in (snapshot.principal, debt.quantize(Decimal("0.01"))):
            raise UserError(f"--loan-usdt {loan_usdt} but Bybit reports principal {snapshot.principal} USDT (debt "
                            f"{debt} with interest) on account {account!r}")
    refuse_unsafe(snapshot.collateral_btc, debt)
    return snapshot.collateral_btc, debt, False


async def cmd_loan_enrol(args: argparse.Namespace, settings: Settings) -> int:
    loan_id, account = args.loan_id, args.account
    if not re.match(LOAN_ID_PATTERN, loan_id):
        raise UserError(f"loan id {loan_id!r} must be 1 to 40 letters, digits, - or _")
    _check_account(settings, account)
    try:
        bands = BandSettings().with_changes(_band_changes(args))
    except ValueError as exc:
        raise UserError(f"bands refused: {exc}") from None
    amounts = _enrol_amounts(args)
    client = await connect(settings)
    await _refuse_if_enrolled(client, loan_id, account)
    venue = _bybit_client(settings, account)
    try:
        try:
            ticker = await venue.ticker(LOAN_SYMBOL)
        except VenueError as err:
            raise UserError(f"cannot read the {LOAN_SYMBOL} price: {err}") from None
        last, index = ticker.last, ticker.index or ticker.last
        collateral, debt, opened = await _enrolled_loan(settings, venue, account, amounts, last, index, bands)
    finally:
        await venue.close()
    ltv = ltv_pct(debt, collateral, last, index)
    band = band_for(ltv, Band.SAFE, bands.bands())
    inp = LoanGuardInput(loan_id=loan_id, venue=LOAN_VENUE, account=account, symbol=LOAN_SYMBOL, bands=bands,
                         reserve_usdt=args.reserve_usdt, always_repay=args.always_repay)
    try:
        await client.start_workflow(LoanGuardWorkflow.run, inp, id=inp.workflow_id, task_queue=settings.task_queue,
                                    static_summary=f"loan {loan_id} · enrolled at LTV {ltv:.1f} % · account {account}")
    except WorkflowAlreadyStartedError:
        raise UserError(f"loan {loan_id} is already enrolled (see `starter.py loan status {loan_id}`)") from None
    data = {"loan_id": loan_id, "workflow_id": inp.workflow_id, "venue": LOAN_VENUE, "account": account,
            "mode": settings.mode, "opened_on_simulator": opened, "collateral_btc": collateral, "debt_usdt": debt,
            "price": risk_price(last, index), "ltv_pct": ltv.quantize(Decimal("0.01")), "band": band.name,
            "reserve_usdt": args.reserve_usdt, "always_repay": args.always_repay, "bands": bands.model_dump(),
            "status_command": f"starter.py loan status {loan_id}", "ui": loan_ui_url(settings, loan_id)}
    emit(args, data, "\n".join([
        f"loan {loan_id} enrolled: LTV {ltv:.2f} % ({band.name}) · {collateral} BTC collateral · {debt} USDT debt · "
        f"bybit account {account}" + (" (loan opened on the simulator)" if opened else ""),
        f"bands: target {bands.target} · caution {bands.caution} · danger {bands.danger} · critical {bands.critical}; "
        f"reserve {args.reserve_usdt} USDT" + (" · always repay" if args.always_repay else ""),
        f"watch it: python starter.py loan status {loan_id}",
        f"          {loan_ui_url(settings, loan_id)}"]))
    return 0


async def _loan_handle(settings: Settings, loan_id: str) -> WorkflowHandle[Any, LoanView]:
    from temporalio.service import RPCError, RPCStatusCode

    client = await connect(settings)
    handle = client.get_workflow_handle_for(LoanGuardWorkflow.run, loan_workflow_id(loan_id))
    try:
        description = await handle.describe()
    except RPCError as err:
        if err.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
            raise UserError(f"no enrolled loan {loan_id} (see `starter.py loan list`)") from None
        raise
    if description.status != WorkflowExecutionStatus.RUNNING:
        state = description.status.name.lower() if description.status else "unknown"
        raise UserError(f"no enrolled loan {loan_id}: its guard is {state} (see `starter.py loan list`)")
    return handle


def _pct(value: Decimal | None) -> str:
    return f"{value:.2f} %" if value is not None else "unknown"


def usdt(value: Decimal) -> str:
    """USDT as the venue books it: to the cent, never in exponent notation (no 28-digit debts, no 0E-12)."""
    return f"{value.quantize(Decimal('0.01'), rounding=ROUND_HALF_EVEN):f}"


def btc(value: Decimal) -> str:
    """BTC to the satoshi at most, trailing zeros dropped, never in exponent notation."""
    shown = value.quantize(Decimal("1e-8"), rounding=ROUND_HALF_EVEN).normalize()
    return f"{shown:f}" if shown else "0"


def _loan_table(view: LoanView) -> list[list[Any]]:
    b, t = view.bands, view.last_treasury
    liquidation = view.hedge_liquidation_price
    return [["field", "value"], ["loan", f"{view.loan_id} on {view.venue} account {view.account}"],
            ["LTV", f"{_pct(view.ltv_pct)} ({view.band}); highest {_pct(view.max_ltv_pct)}"],
            ["debt", f"{usdt(view.debt_usdt)} USDT (principal {usdt(view.principal_usdt)}, interest "
                     f"{usdt(view.interest_usdt)}) · collateral {btc(view.collateral_btc)} BTC"],
            ["price", f"{usdt(view.price)} ({view.price_source}{', STALE feed' if view.feed_stale else ''})"
                      if view.price is not None else "none yet"],
            ["hedge", f"{view.hedge_id}: short {btc(view.hedge_current_btc)} BTC, target {btc(view.hedge_target_btc)}"
                      + (" (closed)" if view.hedge_closed else "" if view.hedge_started
                         else " (not opened: no short needed yet)")],
            ["hedge PnL", f"realised {usdt(view.hedge_realised_pnl)}, unrealised {usdt(view.hedge_unrealised_pnl)}; "
                          f"liquidation {usdt(liquidation) if liquidation is not None else 'none'}"],
            ["net delta", f"{btc(view.net_delta_btc)} BTC"],
            ["treasury", f"reserve {usdt(view.reserve_usdt)} + enrolment reserve {usdt(view.enrol_reserve_left_usdt)} "
                         f"USDT; {view.treasury_actions} actions; last "
                         + (f"{t.kind} {usdt(t.usdt)} USDT ({t.note})" if t else "none")
                         + (f"; hedge losses written off {usdt(view.written_off_usdt)} USDT" if view.written_off_usdt
                            else "")],
            ["bands", f"target {b.target} · caution {b.caution} · danger {b.danger} · critical {b.critical} "
                      f"(hysteresis {b.hysteresis}, repay below {b.repay_below}); multipliers {b.multiplier_caution}/"
                      f"{b.multiplier_danger}/{b.multiplier_critical}" + (" · always repay" if view.always_repay else "")],
            ["paused", "yes" if view.paused else "no"], ["unenrolling", "yes" if view.unenrolling else "no"],
            ["next sync", f"{view.next_sync_at:%H:%M:%S}" if view.next_sync_at else "none"]]


async def cmd_loan_status(args: argparse.Namespace, settings: Settings) -> int:
    from temporalio.client import WorkflowQueryFailedError
    from temporalio.service import RPCError

    handle = await _loan_handle(settings, args.loan_id)
    try:
        view = await handle.query(LoanGuardWorkflow.state, rpc_timeout=QUERY_TIMEOUT)
    except (RPCError, WorkflowQueryFailedError) as err:
        # no worker answered in time: one that just died leaves the run on its queue until the server gives up on it
        raise UserError(f"loan {args.loan_id}: its guard did not answer the status query ({err}); is a worker "
                        f"running? A worker that just restarted takes it back within seconds: try again") from None
    emit(args, view.model_dump(mode="json"), _loan_table(view))
    return 0


async def cmd_loan_list(args: argparse.Namespace, settings: Settings) -> int:
    from temporalio.client import WorkflowQueryFailedError
    from temporalio.service import RPCError

    client = await connect(settings)
    data: list[dict[str, Any]] = []
    rows: list[list[Any]] = [["loan", "LTV", "band", "hedge target", "hedge current", "paused", "summary"]]
    failed = False
    async for execution in client.list_workflows(RUNNING_LOANS):
        loan_id = execution.id.removeprefix("loan-")
        try:
            view = await client.get_workflow_handle(execution.id, run_id=execution.run_id).query(
                LoanGuardWorkflow.state, rpc_timeout=QUERY_TIMEOUT)
        except (RPCError, WorkflowQueryFailedError) as err:
            failed = True
            data.append({"loan_id": loan_id, "error": str(err)})
            rows.append([loan_id, "?", "?", "?", "?", "?", f"state query failed: {err}"])
            continue
        data.append(view.model_dump(mode="json"))
        rows.append([view.loan_id, _pct(view.ltv_pct), view.band, btc(view.hedge_target_btc), btc(view.hedge_current_btc),
                     "yes" if view.paused else "no", view.summary])
    emit(args, data, rows)
    return 1 if failed else 0


async def cmd_loan_signal(args: argparse.Namespace, settings: Settings) -> int:
    handle = await _loan_handle(settings, args.loan_id)
    if args.loan_command == "pause":
        await handle.signal(LoanGuardWorkflow.pause, operator())
        text = "paused: watching and alerting, trading nothing and moving no money until resume"
    elif args.loan_command == "resume":
        await handle.signal(LoanGuardWorkflow.resume, operator())
        text = "resumed"
    else:
        await handle.signal(LoanGuardWorkflow.force_close, operator(args.reason))
        text = "closing its hedge now (and paused: `loan resume` opens a new hedge)"
    if args.loan_command != "resume":
        text += await _pause_seen(handle)
    emit(args, {"loan_id": args.loan_id, "sent": args.loan_command}, f"loan {args.loan_id}: {text}")
    return 0


async def _pause_seen(handle, within_s: float = 10.0) -> str:
    """The guard has taken the pause once its state says so; from then on its hedge (the only code that trades)
    is told to place nothing. Say what was seen."""
    from temporalio.client import WorkflowQueryFailedError
    from temporalio.service import RPCError

    deadline = time.monotonic() + within_s
    while True:
        try:
            view = await handle.query(LoanGuardWorkflow.state, rpc_timeout=QUERY_TIMEOUT)
        except (RPCError, WorkflowQueryFailedError) as err:
            return f"; NOT CONFIRMED: the guard did not answer ({err}); see `starter.py loan status`"
        if view.paused:
            return "; the guard confirms it is paused"
        if time.monotonic() > deadline:
            return (f"; NOT CONFIRMED: after {within_s:.0f} s the guard does not show the pause yet (see "
                    f"`starter.py loan status {view.loan_id}`)")
        await asyncio.sleep(0.2)


async def cmd_loan_unenrol(args: argparse.Namespace, settings: Settings) -> int:
    from temporalio.client import WorkflowFailureError

    handle = await _loan_handle(settings, args.loan_id)
    before = await handle.query(LoanGuardWorkflow.state)
    await handle.signal(LoanGuardWorkflow.unenrol)
    if not args.wait:
        hedged = before.hedge_started and not before.hedge_closed
        emit(args, {"loan_id": args.loan_id, "sent": "unenrol", "hedge_open": hedged},
             f"loan {args.loan_id}: unenrolling. "
             + ("Its hedge closes first; the guard ends once the hedge is flat" if hedged
                else "No hedge is open, so the guard ends now")
             + f" (follow it with `starter.py loan status {args.loan_id}`, or unenrol with --wait)")
        return 0
    try:
        view = await asyncio.wait_for(handle.result(), timeout=args.timeout_s)
    except TimeoutError:
        raise UserError(f"loan {args.loan_id} still unenrolling after {args.timeout_s} s (its hedge is not flat yet); "
                        f"see `starter.py loan status {args.loan_id}`") from None
    except WorkflowFailureError as err:
        raise UserError(f"loan {args.loan_id}'s guard did not end cleanly: {err.cause or err}") from None
    emit(args, view.model_dump(mode="json"), f"loan {args.loan_id}: unenrolled, hedge closed; no longer guarded "
                                             f"(final {view.summary})")
    return 0


async def cmd_loan_set_bands(args: argparse.Namespace, settings: Settings) -> int:
    from temporalio.client import WorkflowUpdateFailedError

    changes = {k: str(v) for k, v in _band_changes(args).items()}
    if not changes:
        raise UserError("nothing to change: give at least one band option (see `loan set-bands --help`)")
    handle = await _loan_handle(settings, args.loan_id)
    try:
        bands = await handle.execute_update(LoanGuardWorkflow.set_bands, changes)
    except WorkflowUpdateFailedError as err:
        message = str(err.cause.message if err.cause else err)
        raise UserError(message if message.startswith("bands refused") else f"bands refused: {message}") from None
    data = bands.model_dump(mode="json")
    emit(args, data, [["band setting", "value"]] + [[k, v] for k, v in data.items()])
    return 0


# -- wiring -----------------------------------------------------------------------------------------
def build_parser() -> Parser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output")
    parser = Parser(prog="starter.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    sub.add_parser("status", parents=[common], help="check Temporal, the worker and the store").set_defaults(
        func=cmd_status)
    sub.add_parser("config", parents=[common], help="show the effective settings (no secrets)").set_defaults(
        func=cmd_config)
    hedge = sub.add_parser("hedge", help="hedges and their ledgers").add_subparsers(
        dest="hedge_command", required=True, parser_class=Parser)
    listing = hedge.add_parser("list", parents=[common], help="list hedges")
    listing.add_argument("--book", choices=["loan", "vault", "insurance", "lp"])
    listing.add_argument("--status", choices=["PENDING", "OPEN", "CLOSING", "CLOSED"])
    listing.set_defaults(func=cmd_hedge_list)
    ledger = hedge.add_parser("ledger", parents=[common], help="a hedge's ledger events")
    ledger.add_argument("hedge_id")
    ledger.set_defaults(func=cmd_hedge_ledger)
    verify = hedge.add_parser("verify", parents=[common], help="rebuild a hedge from its ledger and compare")
    verify.add_argument("hedge_id")
    verify.set_defaults(func=cmd_hedge_verify)
    hedge.add_parser("state", parents=[common], help="a running hedge's state").set_defaults(func=cmd_hedge_state)
    for name, text in (("pause", "cancel the open order and place none until resume"),
                       ("resume", "place orders again"), ("force-close", "close now, reduce-only, even when paused")):
        cmd = hedge.add_parser(name, parents=[common], help=text)
        cmd.set_defaults(func=cmd_hedge_signal)
        if name == "force-close":
            cmd.add_argument("--reason", default="operator", help="recorded in the workflow's log")
    policy = hedge.add_parser("set-policy", parents=[common], help="change a running hedge's order policy")
    policy.add_argument("--replace-after-s", type=int)
    policy.add_argument("--fill-check-s", type=int)
    policy.add_argument("--expiry-s", type=int)
    policy.add_argument("--price-band-bps")
    policy.add_argument("--max-order-qty")
    policy.add_argument("--urgency")
    policy.set_defaults(func=cmd_hedge_set_policy)
    for sub_parser in (hedge.choices[n] for n in ("state", "pause", "resume", "force-close", "set-policy")):
        sub_parser.add_argument("hedge_id")
    _loan_parsers(sub, common)
    return parser


def _add_band_options(parser: argparse.ArgumentParser) -> None:
    d = BandSettings()
    group = parser.add_argument_group(
        "bands (LTV %) and hedge multipliers (x collateral)",
        f"defaults: target {d.target}, caution {d.caution}, danger {d.danger}, critical {d.critical}, hysteresis "
        f"{d.hysteresis}, repay below {d.repay_below}, safe below {d.safe_below}; multipliers caution "
        f"{d.multiplier_caution}, danger {d.multiplier_danger}, critical {d.multiplier_critical}")
    for name in BAND_OPTIONS:
        group.add_argument(f"--{name.replace('_', '-')}", dest=name, type=_number, metavar="N")


def _loan_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    loan = sub.add_parser("loan", help="guarded loans (LoanGuardWorkflow, id loan-<loan id>)").add_subparsers(
        dest="loan_command", required=True, parser_class=Parser)
    enrol = loan.add_parser("enrol", parents=[common], help="start guarding a Bybit BTC-collateralised USDT loan",
                            description="Start guarding a loan. Paper mode with --collateral-btc and --loan-usdt opens "
                                        "the loan on the simulator; without them (and in live mode) the account's "
                                        "existing loan is read from Bybit. Nothing is started or written for a loan "
                                        "that fails a check.")
    enrol.add_argument("--loan-id", required=True, help="your name for the loan: letters, digits, - or _")
    enrol.add_argument("--account", required=True, help="the bybit account that holds the loan")
    enrol.add_argument("--collateral-btc", type=_number, metavar="X", help="paper: BTC pledged (with --loan-usdt)")
    enrol.add_argument("--loan-usdt", type=_number, metavar="Y", help="paper: USDT borrowed (with --collateral-btc)")
    enrol.add_argument("--reserve-usdt", type=_number, default=Decimal(0), metavar="R",
                       help="USDT set aside now, repaid into the loan at CRITICAL (default 0)")
    enrol.add_argument("--always-repay", action="store_true",
                       help="realised hedge profit always repays the loan (default: collateral above caution, "
                            "repayment below repay-below, reserve in between)")
    _add_band_options(enrol)
    enrol.set_defaults(func=cmd_loan_enrol)
    loan.add_parser("list", parents=[common], help="enrolled loans: LTV, band, hedge").set_defaults(func=cmd_loan_list)
    status = loan.add_parser("status", parents=[common], help="one loan's LTV, debt, hedge, treasury and bands")
    status.set_defaults(func=cmd_loan_status)
    for name, text in (("pause", "keep watching and alerting, but trade nothing and move no money"),
                       ("resume", "trade and move money again"),
                       ("force-close", "close the loan's hedge now, and pause (resume opens a new hedge)")):
        cmd = loan.add_parser(name, parents=[common], help=text)
        cmd.set_defaults(func=cmd_loan_signal)
        if name == "force-close":
            cmd.add_argument("--reason", default="operator", help="recorded in the workflow's log")
    unenrol = loan.add_parser("unenrol", parents=[common], help="close the hedge, then stop guarding the loan")
    unenrol.add_argument("--wait", action="store_true", help="wait until the hedge is flat and the guard has ended")
    unenrol.add_argument("--timeout-s", type=float, default=600.0, help="how long --wait waits (default 600)")
    unenrol.set_defaults(func=cmd_loan_unenrol)
    bands = loan.add_parser("set-bands", parents=[common], help="change a guarded loan's bands (validated; all or nothing)")
    _add_band_options(bands)
    bands.set_defaults(func=cmd_loan_set_bands)
    for sub_parser in (loan.choices[n] for n in ("status", "pause", "resume", "force-close", "unenrol", "set-bands")):
        sub_parser.add_argument("loan_id")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        result = args.func(args, settings)
        return asyncio.run(result) if asyncio.iscoroutine(result) else result
    except (UserError, SettingsError, TemporalUnreachable, StoreError) as exc:
        print(f"starter.py: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown: the SDK's native threads can crash it (sdk-python#300)
