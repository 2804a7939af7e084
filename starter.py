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
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from collections.abc import Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Any, NoReturn

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

from activities.store import Store, StoreError
from activities.temporal_client import TemporalUnreachable, connect
from models.health import HealthReport, ReadinessRequest
from models.settings import Settings, SettingsError, load_settings
from workflows.health import HealthCheckWorkflow
from workflows.hedge import HedgeWorkflow


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


async def cmd_hedge_signal(args: argparse.Namespace, settings: Settings) -> int:
    handle = await _hedge_handle(settings, args.hedge_id)
    if args.hedge_command == "pause":
        await handle.signal(HedgeWorkflow.pause)
    elif args.hedge_command == "resume":
        await handle.signal(HedgeWorkflow.resume)
    else:
        await handle.signal(HedgeWorkflow.force_close, args.reason)
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
    return parser


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
