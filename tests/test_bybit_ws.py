"""ccxt.pro against the Bybit emulator's websockets: public tickers and private order, execution and
position streams, and a dropped connection that the client recovers from."""

from __future__ import annotations

import asyncio
from decimal import Decimal as D

import aiohttp
from ccxt.base.errors import NetworkError

from models.venue import OrderRequest, TimeInForce

SYMBOL = "BTC/USDT:USDT"


async def next_matching(watch, predicate, timeout: float = 5.0):
    async def loop():
        while True:
            value = await watch()
            if predicate(value):
                return value
    return await asyncio.wait_for(loop(), timeout)


async def test_ticker_stream_follows_the_price(sim, venues):
    v = await venues.get("bybit", "desk")
    await v.markets()
    first = await asyncio.wait_for(v.ex.watch_ticker(SYMBOL), 5)
    assert first["last"] == 60000.0
    sim.market.set_price("BTCUSDT", D("58000"))
    moved = await next_matching(lambda: v.ex.watch_ticker(SYMBOL), lambda t: t["last"] == 58000.0)
    assert moved["info"]["markPrice"] == "58000"


async def test_private_streams_see_orders_fills_and_positions(sim, venues):
    v = await venues.get("bybit", "desk")
    await v.markets()
    orders = asyncio.create_task(next_matching(lambda: v.ex.watch_orders(SYMBOL),
                                               lambda os: any(o["status"] == "closed" for o in os)))
    trades = asyncio.create_task(next_matching(lambda: v.ex.watch_my_trades(SYMBOL), lambda ts: len(ts) > 0))
    positions = asyncio.create_task(next_matching(lambda: v.ex.watch_positions([SYMBOL]),
                                                  lambda ps: any(p["contracts"] for p in ps)))
    await asyncio.sleep(0.3)  # subscriptions in place
    await v.place_order(OrderRequest(symbol="BTCUSDT", client_order_id="hg-ws-1", side="sell", qty=D("0.01"),
                                     price=D("60100"), time_in_force=TimeInForce.POST_ONLY))
    sim.market.set_price("BTCUSDT", D("60200"))
    filled = await orders
    assert filled[-1]["clientOrderId"] == "hg-ws-1"
    assert (await trades)[-1]["amount"] == 0.01
    assert [p["side"] for p in await positions if p["contracts"]] == ["short"]


async def test_a_dropped_websocket_is_reconnected(sim, venues):
    v = await venues.get("bybit", "desk")
    await v.markets()
    await asyncio.wait_for(v.ex.watch_ticker(SYMBOL), 5)
    opened = sim.bybit.connections_opened
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{sim.urls['control']}/control/fault",
                             json={"venue": "bybit", "kind": "ws_drop", "count": 1}) as resp:
            assert (await resp.json())["dropped_now"] == 1
    sim.market.set_price("BTCUSDT", D("59000"))

    async def watch_through_drop():
        try:
            return await v.ex.watch_ticker(SYMBOL)
        except NetworkError:  # a watch pending at the moment of the drop fails; the next one reconnects
            return {"last": None}

    again = await next_matching(watch_through_drop, lambda t: t["last"] == 59000.0, timeout=10)
    assert again["symbol"] == SYMBOL and sim.bybit.connections_opened == opened + 1
