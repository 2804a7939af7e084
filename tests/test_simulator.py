"""What the simulator does as a venue: partial fills, depth, liquidation, funding from history, the loan
book, the replay path, determinism, and the control API's contract."""

from __future__ import annotations

from decimal import Decimal as D

import aiohttp
import pytest

from models.venue import OrderRequest, OrderStatus, OrderType, TimeInForce
from sim.replay import DATA_DIR
from sim.server import Simulator

CRASH = "btcusdt_binance_perp_1m_2020-03-12_crash.csv"


async def control(sim, verb: str, url_path: str, body=None, *, expect: int = 200):
    async with aiohttp.ClientSession() as http:
        async with http.request(verb, f"{sim.urls['control']}{url_path}", json=body) as resp:
            assert resp.status == expect, await resp.text()
            return await resp.json()


def order(cid, side, qty, price=None, **kw):
    return OrderRequest(symbol="BTCUSDT", client_order_id=cid, side=side, qty=D(qty),
                        price=D(price) if price else None, **kw)


@pytest.mark.parametrize("venue", ["bybit", "binanceusdm"])
async def test_resting_order_fills_in_parts_as_the_price_trades_through(sim, venues, venue):
    await control(sim, "POST", "/control/config", {"venue": venue, "maker_fill_qty": "0.004"})
    v = await venues.get(venue, "desk")
    await v.place_order(order("p-1", "sell", "0.01", "60100", time_in_force=TimeInForce.POST_ONLY))
    seen = []
    for price in ("60120", "60130", "60140"):
        sim.market.set_price("BTCUSDT", D(price))
        state = await v.order_by_client_id("BTCUSDT", "p-1")
        seen.append((state.status, state.filled))
    assert seen == [(OrderStatus.PARTIALLY_FILLED, D("0.004")), (OrderStatus.PARTIALLY_FILLED, D("0.008")),
                    (OrderStatus.FILLED, D("0.01"))]
    assert [f.qty for f in (await v.events_since("BTCUSDT", None)).fills] == [D("0.004"), D("0.004"), D("0.002")]


async def test_a_large_taker_order_walks_the_book(sim, venues):
    await control(sim, "POST", "/control/config", {"venue": "bybit", "level_qty": "0.005"})
    v = await venues.get("bybit", "desk")
    done = await v.place_order(order("d-1", "buy", "0.012", "60100", type=OrderType.LIMIT, time_in_force=TimeInForce.IOC))
    fills = (await v.events_since("BTCUSDT", None)).fills
    assert [f.qty for f in fills] == [D("0.005"), D("0.005"), D("0.002")]
    assert fills[0].price < fills[1].price < fills[2].price <= D("60100")
    assert done.status == OrderStatus.FILLED and done.avg_price > fills[0].price


async def test_ioc_remainder_beyond_the_limit_is_cancelled(sim, venues):
    await control(sim, "POST", "/control/config", {"venue": "binanceusdm", "level_qty": "0.005"})
    v = await venues.get("binanceusdm", "desk")
    done = await v.place_order(order("i-1", "buy", "0.02", "60003", type=OrderType.LIMIT, time_in_force=TimeInForce.IOC))
    assert done.status == OrderStatus.EXPIRED and done.filled == D("0.005")


@pytest.mark.parametrize("venue", ["bybit", "binanceusdm"])
async def test_a_short_hedge_is_liquidated_when_mark_reaches_its_liquidation_price(sim, venues, venue):
    v = await venues.get(venue, "desk")
    await v.place_order(order("l-1", "sell", "0.1", type=OrderType.MARKET))
    pos = await v.position("BTCUSDT")
    assert pos.size == D("-0.1") and pos.liquidation_price is not None
    sim.market.set_price("BTCUSDT", pos.liquidation_price + 10)
    assert (await v.position("BTCUSDT")).size == 0
    liquidations = (await control(sim, "GET", "/control/liquidations"))["hedges"]
    assert [(x["venue"], x["account"], x["side"], x["qty"]) for x in liquidations] == [(venue, "desk", "buy", "0.1")]
    assert D(liquidations[0]["price"]) % D("0.1") == 0  # filled on the tick grid, like any venue fill
    if venue == "bybit":  # Bybit marks it in the execution list; Binance via the autoclose- order
        fills = (await v.events_since("BTCUSDT", None)).fills
        assert [f.liquidation for f in fills] == [False, True]


async def test_replay_walks_open_nearer_extreme_other_extreme_close(sim):
    await control(sim, "POST", "/control/replay", {"file": CRASH, "speed": 0})
    step = await control(sim, "POST", "/control/replay/step", {"bars": 1})
    # first bar: open 5886.96, high 5905.00, low 5860.87, close 5872.32; the high is nearer the open
    assert [p["price"] for p in step["points"]] == ["5886.96", "5905.00", "5860.87", "5872.32"]
    state = await control(sim, "GET", "/control/state")
    assert state["prices"]["BTCUSDT"]["last"] == "5872.32" and state["market_time"].startswith("2020-03-12T22:21:59")
    assert "real data" in state["prices"]["BTCUSDT"]["source"]


async def test_replay_settles_funding_at_the_historical_rate(sim, venues):
    await control(sim, "POST", "/control/replay", {"file": CRASH, "speed": 0, "start": "2020-03-12T23:55:00Z"})
    await control(sim, "POST", "/control/replay/step", {"points": 1})
    v = await venues.get("bybit", "desk")
    await v.place_order(order("f-1", "sell", "0.1", type=OrderType.MARKET))
    await control(sim, "POST", "/control/replay/step", {"bars": 6})  # crosses 2020-03-13 00:00 UTC
    (settlement,) = [s for s in sim.funding_settlements if s["symbol"] == "BTCUSDT"]
    assert settlement["market_time"] == "2020-03-13T00:00:00+00:00"
    rate = sim.funding_history().rate("BTCUSDT", sim.replay.points[0].ts.replace(day=13, hour=0, minute=0, second=0))
    assert D(settlement["rate"]) == rate
    (paid,) = (await v.events_since("BTCUSDT", None)).funding
    assert paid.rate == rate


async def test_loan_book_interest_ltv_by_lower_price_and_liquidation(sim, venues):
    await venues.get("bybit", "borrower")
    loan = await control(sim, "POST", "/control/loans", {"account": "borrower", "collateral_btc": "1",
                                                         "debt_usdt": "24000"})
    assert D(loan["ltv"]) == D("0.4")
    await control(sim, "POST", "/control/advance", {"seconds": 3600})
    (after_hour,) = await control(sim, "GET", "/control/loans")
    assert D(after_hour["interest"]) == D("24000") * D(after_hour["hourly_rate"])
    await control(sim, "POST", "/control/price", {"symbol": "BTCUSDT", "price": "60000", "index": "48000"})
    (lower,) = await control(sim, "GET", "/control/loans")
    assert D(lower["ltv"]) == D(lower["debt"]) / D("48000")  # valued at min(last, index)
    await control(sim, "POST", "/control/price", {"symbol": "BTCUSDT", "price": "26000"})
    (gone,) = await control(sim, "GET", "/control/loans")
    assert gone["status"] == "liquidated" and D(gone["liquidation"]["ltv"]) >= D("0.91")
    assert (await control(sim, "GET", "/control/liquidations"))["loans"][0]["account"] == "borrower"


async def test_runs_are_deterministic_given_the_seed():
    async def ids(seed: int):
        s = Simulator(seed=seed, prices={"BTCUSDT": D("60000"), "ETHUSDT": D("3000")})
        account, _ = s.engines["bybit"].create_account("a", "k", "s", {"USDT": D("10000")})
        placed = s.engines["bybit"].place(account, symbol="BTCUSDT", side="sell", type="market", qty=D("0.01"),
                                          price=None, tif="IOC", reduce_only=False, client_id="x")
        return placed.order_id, [f.exec_id for f in account.fills]

    assert await ids(7) == await ids(7) != await ids(8)


@pytest.mark.parametrize("url_path,body,message", [
    ("/control/price", {"symbol": "BTCUSDT", "price": "-1"}, "prices must be positive"),
    ("/control/price", {"symbol": "DOGEUSDT", "price": "1"}, "unknown DOGEUSDT"),
    ("/control/fault", {"venue": "bybit", "kind": "meteor"}, "kind must be one of"),
    ("/control/fault", {"venue": "kraken", "kind": "http500"}, "venue must be one of"),
    ("/control/replay", {"file": "nope.csv"}, "no replay file nope.csv"),
    ("/control/replay", {"file": CRASH, "start": "1999-01-01T00:00:00Z"}, "outside"),
    ("/control/accounts", {"venue": "bybit"}, "api_key and secret are required"),
    ("/control/loans", {"account": "ghost", "collateral_btc": "1", "debt_usdt": "1"}, "no bybit account 'ghost'"),
])
async def test_control_api_refuses_bad_requests_clearly(sim, url_path, body, message):
    answer = await control(sim, "POST", url_path, body, expect=400)
    assert message in answer["error"]


async def test_control_api_contract(sim, venues):
    created = await control(sim, "POST", "/control/accounts", {"venue": "bybit", "api_key": "k1", "secret": "s1",
                                                               "balances": {"USDT": "5000", "BTC": "0.5"}}, expect=201)
    assert created["created"] is True and created["balances"] == {"USDT": "5000", "BTC": "0.5"}
    again = await control(sim, "POST", "/control/accounts", {"venue": "bybit", "api_key": "k1", "secret": "s1",
                                                             "balances": {"USDT": "1"}})
    assert again["created"] is False and again["balances"]["USDT"] == "5000"  # never reset by a second call
    price = await control(sim, "POST", "/control/price", {"symbol": "BTCUSDT", "price": "52000"})
    assert price["last"] == "52000"
    fault = await control(sim, "POST", "/control/fault", {"venue": "bybit", "kind": "http500", "count": 3})
    assert fault["remaining"] == 3 and len(await control(sim, "GET", "/control/faults")) == 1
    await control(sim, "DELETE", "/control/faults")
    state = await control(sim, "GET", "/control/state")
    assert state["prices"]["BTCUSDT"]["last"] == "52000" and state["replay"] is None and state["faults"] == []
    replay = await control(sim, "POST", "/control/replay", {"file": str(DATA_DIR / CRASH), "speed": 60})
    assert replay["points_total"] == 287 * 4 and replay["file"] == CRASH
    assert isinstance(await control(sim, "GET", "/control/orders?venue=bybit"), list)
    assert isinstance(await control(sim, "GET", "/control/calls?venue=bybit"), list)


async def test_seeking_a_replay_settles_nothing_it_skipped(sim, venues):
    await control(sim, "POST", "/control/replay", {"file": CRASH, "speed": 0})
    await control(sim, "POST", "/control/replay/step", {"points": 1})
    v = await venues.get("bybit", "desk")
    await v.place_order(order("s-1", "sell", "0.1", type=OrderType.MARKET))
    await control(sim, "POST", "/control/replay/seek", {"ts": "2020-03-13T03:00:00Z"})  # jumps over 00:00
    await control(sim, "POST", "/control/replay/step", {"points": 1})
    assert sim.funding_settlements == [] and (await v.events_since("BTCUSDT", None)).funding == []


async def test_a_liquidation_fills_at_the_bankruptcy_price_so_the_fill_carries_the_whole_loss(sim, venues):
    v = await venues.get("bybit", "desk")
    await v.place_order(order("b-1", "sell", "0.1", type=OrderType.MARKET))
    pos = sim.engines["bybit"].account_by_name("desk").positions["BTCUSDT"]
    entry, margin = pos.entry, pos.margin
    sim.market.set_price("BTCUSDT", pos.liquidation_price(D("0.005")) + 1)
    bust = (await v.events_since("BTCUSDT", None)).fills[-1]
    assert bust.liquidation and abs((entry - bust.price) * D("0.1") + margin) <= D("0.1") * D("0.1")


async def test_resting_reduce_only_orders_shrink_and_go_with_the_position(sim, venues):
    v = await venues.get("bybit", "desk")
    await v.place_order(order("r-1", "sell", "0.02", type=OrderType.MARKET))
    await v.place_order(order("r-2", "buy", "0.02", "59000", reduce_only=True))  # a resting close below the market
    await v.place_order(order("r-3", "buy", "0.015", type=OrderType.MARKET, reduce_only=True))
    assert (await v.order_by_client_id("BTCUSDT", "r-2")).qty == D("0.005")
    await v.place_order(order("r-4", "buy", "0.005", type=OrderType.MARKET, reduce_only=True))
    assert (await v.order_by_client_id("BTCUSDT", "r-2")).status == OrderStatus.CANCELLED


async def test_fill_or_kill_is_all_or_nothing(sim):
    engine = sim.engines["bybit"]
    engine.config.depth_levels, engine.config.level_qty = 1, D("0.005")
    account, _ = engine.create_account("f", "fk", "fs", {"USDT": D("10000")})
    placed = engine.place(account, symbol="BTCUSDT", side="buy", type="limit", qty=D("0.01"), price=D("60100"),
                          tif="FOK", reduce_only=False, client_id="fok-1")
    assert (placed.status.value, placed.filled) == ("expired", D(0))


@pytest.mark.parametrize("venue,url_path,code", [
    ("bybit", "/v5/execution/list?category=linear&symbol=BTCUSDT&startTime={start}&endTime={end}", 10001),
    ("binanceusdm", "/fapi/v1/userTrades?symbol=BTCUSDT&startTime={start}&endTime={end}", -4166)])
async def test_fill_queries_are_limited_to_seven_days_as_at_the_venue(sim, venues, venue, url_path, code):
    import time

    v = await venues.get(venue, "desk")
    await v.markets()
    now = int(time.time() * 1000)
    params = dict(p.split("=") for p in url_path.split("?")[1].format(start=now - 8 * 86_400_000, end=now).split("&"))
    method = "private_get_v5_execution_list" if venue == "bybit" else "fapiPrivateGetUserTrades"
    from activities.venue import VenueError

    with pytest.raises(VenueError) as err:
        await v._call(method, params)
    assert err.value.code == code


@pytest.mark.parametrize("venue", ["bybit", "binanceusdm"])
async def test_fills_older_than_seven_days_of_cursor_are_still_read_in_windows(sim, venues, venue):
    import time

    v = await venues.get(venue, "desk")
    await v.place_order(order("w-1", "sell", "0.01", type=OrderType.MARKET))
    month_ago = str(int(time.time() * 1000) - 30 * 86_400_000)
    cursor = month_ago if venue == "bybit" else f"{month_ago},{month_ago}"
    events = await v.events_since("BTCUSDT", cursor)
    assert [f.client_order_id for f in events.fills] == ["w-1"]
