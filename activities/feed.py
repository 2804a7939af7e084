"""The per-symbol price feed: one websocket ticker stream per feed shard, many loans. A loan is signalled only when its
band changes, its LTV moves more than its step, or its keep-alive interval passes, so a busy market does
not flood loan histories.

A stream silent for STREAM_SILENT_S is reconnected (the activity fails and is retried), and every loan of the
shard is told (`feed_down`) so it polls the price until ticks come again.

The feed reads its subscriptions from its own workflow (a query, once a second), so a loan whose debt or
collateral changed is valued with the new figures without restarting the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from ccxt.base.errors import NetworkError
from temporalio import activity
from temporalio.client import WorkflowHandle, WorkflowQueryFailedError
from temporalio.service import RPCError

from activities.venues import VenuePool
from models.loan_guard import FeedSubscription, FeedSubscriptions, FeedWatch, PriceTick, loan_workflow_id
from risk.loan import Band, band_for, ltv_pct

log = logging.getLogger("hedgeguard.feed")
REFRESH_S = 1.0
STREAM_SILENT_S = 15.0  # the venue pushes tickers every 100 ms to 1 s: a stream this quiet is reconnected
SIGNALS_IN_FLIGHT = 64


@dataclass
class Sent:
    band: Band
    ltv: Decimal
    at: float


def wake_due(sub: FeedSubscription, tick: PriceTick, sent: Sent | None, now: float) -> tuple[bool, Band, Decimal]:
    """Whether this tick is worth a signal to the loan, and the band and LTV it puts the loan in."""
    ltv = ltv_pct(sub.debt, sub.collateral_btc, tick.last, tick.index)
    # the band last told to the loan is where it stands (a loan does not re-subscribe for a band change)
    band = band_for(ltv, sent.band if sent is not None else Band(sub.band), sub.bands.bands())
    due = (sent is None or band != sent.band or abs(ltv - sent.ltv) >= sub.ltv_step_pct
           or now - sent.at >= sub.keepalive_s * keepalive_spread(sub.loan_id))
    return due, band, ltv


def keepalive_spread(loan_id: str) -> float:
    """0.8-1.0 of the keep-alive interval, fixed per loan: loans woken together by one tick do not stay in
    step, a thousand keep-alives in the same second."""
    return 0.8 + 0.2 * (zlib.crc32(loan_id.encode()) % 1000) / 1000


def apply_subscriptions(subs: dict[str, FeedSubscription], update: FeedSubscriptions, sent: dict[str, Sent]) -> None:
    """Bring `subs` to the feed's answer (a whole list replaces it, a delta patches it). A loan that subscribed
    again (new debt, collateral or bands) said where it stands: its band is the new anchor. Loans gone are
    forgotten, also by the marks an earlier attempt left."""
    if update.full:
        gone = (subs.keys() | sent.keys()) - {sub.loan_id for sub in update.subscriptions}
    else:
        gone = set(update.removed)
    for loan_id in gone:
        subs.pop(loan_id, None)
        sent.pop(loan_id, None)
    for sub in update.subscriptions:
        mark = sent.get(sub.loan_id)
        if mark is not None and subs.get(sub.loan_id) != sub:
            mark.band = Band(sub.band)
        subs[sub.loan_id] = sub


def _tick(ticker: dict) -> PriceTick:
    info = ticker.get("info") or {}
    last = Decimal(str(info.get("lastPrice") or ticker["last"]))
    return PriceTick(last=last, index=Decimal(str(info.get("indexPrice") or last)),
                     mark=Decimal(str(info.get("markPrice") or last)), at=datetime.now(UTC), source="feed")


async def signal_loan(client, loan_id: str, name: str, arg: object, gate: asyncio.Semaphore) -> bool:
    """One signal to a loan; many go out at once (a band crossing wakes every loan of the shard), `gate` bounds
    how many are in flight. Each heartbeats (the SDK sends at most one per interval): a long round of signals
    is progress, not a hung stream."""
    async with gate:
        try:
            await client.get_workflow_handle(loan_workflow_id(loan_id)).signal(name, arg)
            activity.heartbeat(f"signalling loans: {name}")
            return True
        except RPCError as exc:  # not running, or the server too busy to answer: the next tick tries again
            activity.logger.warning("cannot signal %s to loan %s: %s", name, loan_id, exc)
            return False


async def read_subscriptions(own: WorkflowHandle, version: int) -> FeedSubscriptions | None:
    """The shard's subscriptions changed since `version`, or None when this read failed: the feed goes on with the
    list it has and reads again a second later. A worker refuses a query whose task carries an activation with a
    lagging clock (workflows/clock_guard.py); that is one failed read, not a reason to drop the ticker stream."""
    try:
        return await own.query("subscriptions", version, result_type=FeedSubscriptions)
    except WorkflowQueryFailedError as exc:
        log.warning("feed %s: subscription read failed, keeping the last list: %s", own.id, exc)
        return None


class FeedActivities:
    def __init__(self, venues: VenuePool) -> None:
        self.venues = venues
        # per feed shard, what each loan was last told, kept by this worker across the stream's attempts, rotations and
        # the shard's continue-as-new: an attempt starting blank would tell every loan its price again, a workflow
        # task for each of the shard's guards (bench/README.md, "Scale")
        self.told: dict[str, dict[str, Sent]] = {}

    @activity.defn(name="feed_watch")
    async def watch(self, req: FeedWatch) -> str:
        client = activity.client()
        own = client.get_workflow_handle(activity.info().workflow_id)
        venue = await self.venues.get(req.venue, req.account)
        unified = await venue.unified(req.symbol)
        ticks: asyncio.Queue[dict] = asyncio.Queue(maxsize=1000)

        async def pump() -> None:
            while True:
                try:
                    ticks.put_nowait(await venue.ex.watch_ticker(unified))
                except NetworkError as exc:  # the stream dropped: the next watch reconnects
                    activity.logger.warning("%s ticker stream dropped: %s", req.symbol, exc)
                    await asyncio.sleep(0.5)
                except asyncio.QueueFull:
                    pass

        subs: dict[str, FeedSubscription] = {}
        version, refreshed, started = -1, 0.0, time.monotonic()
        last_tick = started
        sent = self.told.setdefault(own.id, {})
        signals = 0
        gate = asyncio.Semaphore(SIGNALS_IN_FLIGHT)
        task = asyncio.create_task(pump())
        try:
            while time.monotonic() - started < req.rotate_after_s:
                now = time.monotonic()
                if now - refreshed >= REFRESH_S:
                    current = await read_subscriptions(own, version)
                    refreshed = now
                    if current is not None and current.version != version:
                        version = current.version
                        apply_subscriptions(subs, current, sent)
                if task.done():  # the stream pump died of something other than a dropped socket: fail, be retried
                    task.result()
                    raise RuntimeError("ticker stream pump stopped")
                try:
                    ticker = await asyncio.wait_for(ticks.get(), timeout=REFRESH_S)
                except TimeoutError:
                    if time.monotonic() - last_tick > STREAM_SILENT_S:  # failing gets a fresh stream by a retry
                        why = f"{req.symbol} ticker stream silent for {STREAM_SILENT_S:.0f} s"
                        # every loan polls at once instead of after its stale_after_s; a retry that saw no tick
                        # has nothing new to tell (the loans heard it from the attempt before)
                        if last_tick > started or activity.info().attempt == 1:
                            await asyncio.gather(*(signal_loan(client, sub.loan_id, "feed_down", why, gate)
                                                   for sub in subs.values()))
                        sent.clear()  # the loans poll until a tick comes: the next stream's first tick goes to all
                        raise RuntimeError(why) from None
                    activity.heartbeat(f"no tick, {signals} signals sent")
                    continue
                last_tick = time.monotonic()
                while not ticks.empty():  # only the newest price matters
                    ticker = ticks.get_nowait()
                tick = _tick(ticker)
                activity.heartbeat(f"{req.symbol} {tick.last}, {signals} signals sent")
                now = time.monotonic()
                woken: list[tuple[FeedSubscription, Sent]] = []
                for sub in subs.values():
                    due, band, ltv = wake_due(sub, tick, sent.get(sub.loan_id), now)
                    if due:
                        woken.append((sub, Sent(band=band, ltv=ltv, at=now)))
                delivered = await asyncio.gather(*(
                    signal_loan(client, sub.loan_id, "price", tick, gate)
                    for sub, _ in woken))
                for (sub, told), ok in zip(woken, delivered, strict=True):
                    loan_id = sub.loan_id
                    if ok:  # a signal that failed is not "told": the loan is due again on the next tick
                        sent[loan_id] = told
                signals += sum(delivered)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        return f"rotated after {req.rotate_after_s} s, {signals} signals sent"
