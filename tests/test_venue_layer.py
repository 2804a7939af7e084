"""The venue layer drives the real ccxt async clients against the loopback emulators, for Bybit and
Binance USD-M alike: markets, prices, idempotent orders, positions, fills and funding, and the errors a
venue gives, classified by the venue's own codes."""

from __future__ import annotations

from decimal import Decimal as D

import aiohttp
import pytest

from activities.ccxt_venue import BinanceUsdmVenue, BybitVenue, loopback_urls
from activities.venue import OrderRejected, VenueAuthError, VenueClockSkew, VenueUnavailable
from activities.venues import paper_credentials
from models.settings import Credentials
from models.venue import OrderRequest, OrderStatus, OrderType, RejectReason, TimeInForce

VENUES = ["bybit", "binanceusdm"]
BUILDERS = {"bybit": BybitVenue, "binanceusdm": BinanceUsdmVenue}


async def control(sim, verb: str, url_path: str, **body):
    async with aiohttp.ClientSession() as http:
        async with http.request(verb, f"{sim.urls['control']}{url_path}", json=body or None) as resp:
            return await resp.json()


def orders_for(sim, venue: str, client_id: str) -> list:
    return [o for a in sim.engines[venue].accounts.values() for o in a.orders if o.client_id == client_id]


def sell(cid: str, qty: str = "0.01", price: str | None = "60100", **kw) -> OrderRequest:
    return OrderRequest(symbol="BTCUSDT", client_order_id=cid, side="sell", qty=D(qty),
                        price=D(price) if price else None, **kw)


@pytest.mark.parametrize("venue", VENUES)
async def test_paper_accounts_are_created_on_first_use_without_keys(sim, venues, venue):
    v = await venues.get(venue, "loan-desk")
    assert (await v.position("BTCUSDT")).size == 0
    accounts = await control(sim, "GET", f"/control/accounts?venue={venue}")
    assert [(a["name"], a["balances"]["USDT"]) for a in accounts] == [("loan-desk", "100000")]


@pytest.mark.parametrize("venue", VENUES)
async def test_every_client_url_is_loopback(venues, venue):
    v = await venues.get(venue, "desk")

    def walk(node, path="urls"):
        if isinstance(node, dict):
            for k, child in node.items():
                yield from walk(child, f"{path}.{k}")
        elif isinstance(node, list):
            for i, child in enumerate(node):
                yield from walk(child, f"{path}[{i}]")
        elif isinstance(node, str):
            yield path, node

    entries = list(walk(v.ex.urls))
    assert len(entries) > 3
    outside = [(p, u) for p, u in entries if not u.startswith(("http://127.0.0.1:", "ws://127.0.0.1:"))]
    assert outside == []


def test_loopback_rewrite_keeps_paths_and_drops_non_api_entries():
    urls = {"api": {"public": "https://api.{hostname}", "ws": {"linear": "wss://stream.{hostname}/v5/public/linear"}},
            "test": {"public": "https://api-testnet.{hostname}"}, "www": "https://www.bybit.com"}
    assert loopback_urls(urls, "http://127.0.0.1:1234") == {
        "api": {"public": "http://127.0.0.1:1234", "ws": {"linear": "ws://127.0.0.1:1234/v5/public/linear"}}}


@pytest.mark.parametrize("venue", VENUES)
async def test_markets_ticker_and_funding(venues, venue):
    v = await venues.get(venue, "desk")
    btc = (await v.markets())["BTCUSDT"]
    assert (btc.tick_size, btc.qty_step, btc.min_qty) == (D("0.1"), D("0.001"), D("0.001"))
    assert btc.min_notional == (D("5") if venue == "bybit" else D("100"))
    ticker = await v.ticker("BTCUSDT")
    assert ticker.bid < ticker.last == D(60000) < ticker.ask and ticker.mark == ticker.index == D(60000)
    funding = await v.funding_rate("BTCUSDT")
    assert funding.rate == D("0.0001") and funding.next_funding_time is not None


@pytest.mark.parametrize("venue", VENUES)
async def test_order_lifecycle_by_client_id(sim, venues, venue):
    v = await venues.get(venue, "desk")
    placed = await v.place_order(sell("hg-h1-1", time_in_force=TimeInForce.POST_ONLY))
    assert placed.status == OrderStatus.OPEN and placed.time_in_force == TimeInForce.POST_ONLY
    again = await v.place_order(sell("hg-h1-1", time_in_force=TimeInForce.POST_ONLY))
    assert again.order_id == placed.order_id and len(orders_for(sim, venue, "hg-h1-1")) == 1
    assert [o.client_order_id for o in await v.open_orders("BTCUSDT")] == ["hg-h1-1"]

    logged = (await control(sim, "GET", f"/control/orders?venue={venue}"))[0]
    assert logged | {"client_order_id": "hg-h1-1", "side": "sell", "type": "limit", "time_in_force": "PostOnly",
                     "price": "60100", "qty": "0.01", "reduce_only": False} == logged

    cancelled = await v.cancel_order("BTCUSDT", "hg-h1-1")
    assert cancelled.status == OrderStatus.CANCELLED
    assert (await v.cancel_order("BTCUSDT", "hg-h1-1")).status == OrderStatus.CANCELLED  # twice is fine
    assert await v.cancel_order("BTCUSDT", "never-sent") is None
    assert await v.order_by_client_id("BTCUSDT", "never-sent") is None


@pytest.mark.parametrize("venue", VENUES)
async def test_fill_reduce_only_ioc_position_fills_and_funding(sim, venues, venue):
    v = await venues.get(venue, "desk")
    await v.place_order(sell("hg-h2-1", qty="0.02", time_in_force=TimeInForce.POST_ONLY))
    sim.market.set_price("BTCUSDT", D("60150"))  # trades through the resting sell: maker fill
    filled = await v.order_by_client_id("BTCUSDT", "hg-h2-1")
    assert filled.status == OrderStatus.FILLED and filled.avg_price == D("60100")
    pos = await v.position("BTCUSDT")
    assert pos.size == D("-0.02") and pos.entry_price == D("60100") and pos.liquidation_price > D("60150")

    closing = await v.place_order(OrderRequest(symbol="BTCUSDT", client_order_id="hg-h2-2", side="buy",
                                               qty=D("0.005"), price=D("60300"), time_in_force=TimeInForce.IOC,
                                               reduce_only=True))
    assert closing.status == OrderStatus.FILLED and closing.reduce_only and closing.filled == D("0.005")
    assert (await v.position("BTCUSDT")).size == D("-0.015")
    with pytest.raises(OrderRejected) as rej:  # a buy bigger than... a sell can't reduce a short
        await v.place_order(sell("hg-h2-3", qty="0.005", price="60000", reduce_only=True))
    assert rej.value.reason == RejectReason.REDUCE_ONLY

    sim.settle_funding(symbol="BTCUSDT", rate=D("0.0002"))
    first = await v.events_since("BTCUSDT", None)
    assert [(f.side, f.qty, f.client_order_id) for f in first.fills] == [
        ("sell", D("0.02"), "hg-h2-1"), ("buy", D("0.005"), "hg-h2-2")]
    maker, taker = first.fills
    assert maker.fee == D("0.02") * D("60100") * D("0.0002")
    assert taker.fee == D("0.005") * taker.price * (D("0.00055") if venue == "bybit" else D("0.0005"))
    (payment,) = first.funding
    assert payment.amount == D("0.015") * D("60150") * D("0.0002")  # a short receives positive funding

    await v.place_order(OrderRequest(symbol="BTCUSDT", client_order_id="hg-h2-4", side="buy", qty=D("0.015"),
                                     type=OrderType.MARKET, reduce_only=True))
    later = await v.events_since("BTCUSDT", first.cursor)
    new = [f for f in later.fills if f.fill_id not in {x.fill_id for x in first.fills}]
    assert [(f.client_order_id, f.qty) for f in new] == [("hg-h2-4", D("0.015"))]
    assert (await v.position("BTCUSDT")).size == 0


@pytest.mark.parametrize("venue", VENUES)
async def test_post_only_that_would_cross_is_a_rejection_on_both_venues(venues, venue):
    v = await venues.get(venue, "desk")
    with pytest.raises(OrderRejected) as rej:
        await v.place_order(sell("hg-h3-1", price="59000", time_in_force=TimeInForce.POST_ONLY))
    assert rej.value.reason == RejectReason.POST_ONLY_WOULD_CROSS


@pytest.mark.parametrize("venue", VENUES)
async def test_wrong_secret_is_refused(sim, venues, venue):
    await venues.get(venue, "desk")  # creates the paper account
    real = paper_credentials(venue, "desk")
    wrong = Credentials(api_key=real.api_key, api_secret="not-the-secret")
    v = BUILDERS[venue].build("desk", wrong, base_url=sim.urls[venue], rate_limit=False)
    try:
        with pytest.raises(VenueAuthError) as err:
            await v.position("BTCUSDT")
        assert err.value.code == (10004 if venue == "bybit" else -1022)
    finally:
        await v.close()


@pytest.mark.parametrize("venue", VENUES)
async def test_stale_timestamp_is_refused(sim, venues, venue):
    v = await venues.get(venue, "desk")
    await v.markets()
    v.ex.nonce = lambda: v.ex.milliseconds() - 60_000  # a clock one minute behind
    with pytest.raises(VenueClockSkew) as err:
        await v.position("BTCUSDT")
    assert err.value.code == (10002 if venue == "bybit" else -1021)
    refusals = [c for c in sim.calls.query(venue) if (c.get("ret_code") or c.get("code")) in (10002, -1021)]
    assert len(refusals) >= 1


@pytest.mark.parametrize("venue", VENUES)
async def test_rate_limit_answer_backs_off_and_succeeds(sim, venues, venue):
    v = await venues.get(venue, "desk")
    await v.markets()
    await control(sim, "POST", "/control/fault", venue=venue, kind="rate_limit", count=2)
    placed = await v.place_order(sell("hg-h4-1", time_in_force=TimeInForce.POST_ONLY))
    assert placed.status == OrderStatus.OPEN
    limited = [c for c in sim.calls.query(venue) if (c.get("ret_code") or c.get("code")) in (10006, -1003)]
    assert len(limited) == 2 and len(orders_for(sim, venue, "hg-h4-1")) == 1


@pytest.mark.parametrize("venue", VENUES)
async def test_timeout_after_accept_finds_the_order_and_sends_no_second(sim, venues, venue):
    v = await venues.get(venue, "desk")
    await v.markets()
    await control(sim, "POST", "/control/fault", venue=venue, kind="timeout_after_accept", count=1, hold_s=3)
    placed = await v.place_order(sell("hg-h5-1", time_in_force=TimeInForce.POST_ONLY))
    assert placed.client_order_id == "hg-h5-1" and placed.status == OrderStatus.OPEN
    retried = await v.place_order(sell("hg-h5-1", time_in_force=TimeInForce.POST_ONLY))  # an activity retry
    assert retried.order_id == placed.order_id
    creates = [c for c in sim.calls.query(venue) if c["method"] == "POST" and "order" in c["path"]]
    assert len(creates) == 1 and creates[0].get("held") is True
    assert len(orders_for(sim, venue, "hg-h5-1")) == 1


@pytest.mark.parametrize("venue", VENUES)
async def test_a_5xx_storm_on_order_entry_surfaces_as_retryable_and_never_doubles(sim, venues, venue):
    v = await venues.get(venue, "desk")
    await v.markets()
    path = "/v5/order/create" if venue == "bybit" else "/fapi/v1/order"
    await control(sim, "POST", "/control/fault", venue=venue, kind="http500", count=2, path=path, method="POST")
    attempts = 0
    while True:  # what the activity layer does: retry the same request
        attempts += 1
        try:
            placed = await v.place_order(sell("hg-h6-1", time_in_force=TimeInForce.POST_ONLY))
            break
        except VenueUnavailable:
            assert attempts < 5
    assert placed.status == OrderStatus.OPEN and len(orders_for(sim, venue, "hg-h6-1")) == 1
    assert len([c for c in sim.calls.query(venue) if c.get("status") == 500]) == 2


async def test_bybit_sends_no_ccxt_attribution(sim, venues):
    v = await venues.get("bybit", "desk")
    await v.place_order(sell("hg-h7-1", time_in_force=TimeInForce.POST_ONLY))
    posts = [c for c in sim.calls.query("bybit") if c["method"] == "POST"]
    assert posts and all(c["referer"] is None for c in posts)


async def test_binance_client_order_id_is_ours_not_a_broker_prefix(sim, venues):
    v = await venues.get("binanceusdm", "desk")
    await v.place_order(sell("hg-h8-1", time_in_force=TimeInForce.POST_ONLY))
    assert [o.client_id for a in sim.engines["binanceusdm"].accounts.values() for o in a.orders] == ["hg-h8-1"]


@pytest.mark.parametrize("venue", VENUES)
async def test_accounts_share_the_venue_description_and_markets_but_trade_as_themselves(sim, venues, venue):
    """Ten thousand loans are ten thousand clients: what is the same for every account is held once, and each
    account's orders still go out under its own keys and land in its own account."""
    first, second = await venues.get(venue, "desk-a"), await venues.get(venue, "desk-b")
    for name in ("api", "exceptions", "has"):
        assert getattr(second.ex, name) is getattr(first.ex, name), name
    assert second.ex.options is not first.ex.options  # a client's own settings (time difference) stay its own

    def market_loads() -> int:
        return sum(1 for c in sim.calls.entries if c["venue"] == venue
                   and (c["path"].endswith("/instruments-info") or c["path"].endswith("/exchangeInfo")))
    await first.market("BTCUSDT")
    loads = market_loads()
    assert loads > 0
    await second.market("BTCUSDT")
    assert market_loads() == loads  # the second account asked the venue for nothing: the first one's markets
    assert second.ex.markets is first.ex.markets
    assert second.ex.session is first.ex.session
    assert second.ex.apiKey != first.ex.apiKey
    await second.place_order(sell("shared-b1", price="70000"))
    await first.place_order(sell("shared-a1", price="70000"))
    placed = {o.client_id: o.account for o in orders_for(sim, venue, "shared-b1") + orders_for(sim, venue, "shared-a1")}
    assert placed == {"shared-b1": "desk-b", "shared-a1": "desk-a"}


@pytest.mark.parametrize("venue", VENUES)
async def test_a_further_account_client_costs_little_memory(venues, venue):
    """A client each took ~200 KiB (ccxt's description and markets, its own connection pool): 10,000 loans held
    2 GiB in clients alone (bench/README.md, "Scale")."""
    import gc
    import tracemalloc

    await (await venues.get(venue, "desk-0")).ticker("BTCUSDT")
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1, 21):
            await (await venues.get(venue, f"desk-{i}")).ticker("BTCUSDT")
        gc.collect()
        per_client_kib = (tracemalloc.get_traced_memory()[0] - before) / 20 / 1024
    finally:
        tracemalloc.stop()
    assert per_client_kib < 60, f"{per_client_kib:.0f} KiB a client"
