"""Bybit spot on the emulator and the venue layer's idempotent spot buy (USDT -> BTC, fee in BTC), kept apart
from the perp book; and the public ticker stream: pushed continually while the price stands still, silent
under a ws_silence fault while the socket stays open."""

from __future__ import annotations

import json
import time
from decimal import Decimal as D

import aiohttp
import pytest

from activities.ccxt_venue import BybitVenue
from activities.venue import OrderRejected
from models.venue import RejectReason

START_USDT = D("100000")  # paper_balance_usdt: what a new paper account holds


@pytest.fixture
async def desk(sim, venues) -> BybitVenue:
    venue = await venues.get("bybit", "desk")
    assert isinstance(venue, BybitVenue)
    return venue


def balances(sim, name: str = "desk") -> dict[str, D]:
    return sim.engines["bybit"].account_by_name(name).balances


async def control(sim, path: str, body: dict) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{sim.urls['control']}{path}", json=body) as resp:
            data = await resp.json()
            assert resp.status == 200, data
            return data


# -- spot buy ---------------------------------------------------------------------------------------------
async def test_a_buy_turns_usdt_into_btc_at_the_ask_with_the_fee_in_btc(sim, desk: BybitVenue):
    bid, ask = sim.engines["bybit"].touch("BTCUSDT")
    assert (bid, ask) == (D("59997.0"), D("60003.0"))
    fill = await desk.buy_spot("hg-spot-1", D("1000.009"))  # cut to the cent: 1000.00 USDT to spend
    assert fill.client_order_id == "hg-spot-1" and fill.order_id
    assert fill.avg_price == ask
    assert fill.btc_bought == D("0.016665")  # 1000 / 60003, down to Bybit's base precision (0.000001)
    assert fill.usdt_spent == D("0.016665") * ask == D("999.949995")
    assert fill.fee_btc == D("0.000016665")  # 0.1 % of the BTC bought
    assert fill.btc_received == fill.btc_bought - fill.fee_btc == D("0.016648335")
    assert balances(sim) == {"USDT": START_USDT - fill.usdt_spent, "BTC": fill.btc_received}

    # the order reads back in Bybit's shape
    raw = await desk._call("private_get_v5_order_history",
                           {"category": "spot", "symbol": "BTCUSDT", "orderLinkId": "hg-spot-1"})
    row = raw["result"]["list"][0]
    assert raw["result"]["category"] == "spot"
    assert {k: row[k] for k in ("orderId", "orderLinkId", "side", "orderType", "qty", "cumExecQty", "cumExecValue",
                                "cumExecFee", "avgPrice", "orderStatus", "marketUnit")} == {
        "orderId": fill.order_id, "orderLinkId": "hg-spot-1", "side": "Buy", "orderType": "Market", "qty": "1000",
        "cumExecQty": "0.016665", "cumExecValue": "999.949995", "cumExecFee": "0.000016665", "avgPrice": "60003",
        "orderStatus": "Filled", "marketUnit": "quoteCoin"}
    assert int(row["createdTime"]) > 0 and row["cumFeeDetail"] == {"BTC": "0.000016665"}

    # and the wallet lists the BTC
    wallet = await desk._call("private_get_v5_account_wallet_balance", {"accountType": "UNIFIED"})
    coins = {c["coin"]: D(c["walletBalance"]) for c in wallet["result"]["list"][0]["coin"]}
    assert coins == {"BTC": D("0.016648335"), "USDT": START_USDT - D("999.949995")}


async def test_buying_twice_with_one_client_id_buys_once(sim, desk: BybitVenue):
    first = await desk.buy_spot("hg-spot-2", D("500"))
    again = await desk.buy_spot("hg-spot-2", D("500"))
    assert again == first
    assert len([c for c in sim.calls.query("bybit", "/v5/order/create") if c["method"] == "POST"]) == 1
    assert balances(sim)["BTC"] == first.btc_received and len(sim.bybit.spot_orders["desk"]) == 1
    async with aiohttp.ClientSession() as http:  # what a test of the whole stack reads
        async with http.get(f"{sim.urls['control']}/control/spot-orders", params={"account": "desk"}) as resp:
            listed = await resp.json()
        async with http.get(f"{sim.urls['control']}/control/spot-orders", params={"account": "nobody"}) as resp:
            assert await resp.json() == []
    assert [(o["client_order_id"], o["side"], o["exec_qty"], o["account"]) for o in listed] == [
        ("hg-spot-2", "Buy", str(first.btc_bought), "desk")]


async def test_a_duplicate_answer_is_resolved_by_looking_the_id_up(sim, desk: BybitVenue, monkeypatch):
    first = await desk.buy_spot("hg-spot-3", D("300"))
    lookup, calls = desk._spot_order, []

    async def lagging(client_order_id: str):
        calls.append(client_order_id)  # the first lookup misses (a lagging replica), so the order is sent again
        return None if len(calls) == 1 else await lookup(client_order_id)

    monkeypatch.setattr(desk, "_spot_order", lagging)
    assert await desk.buy_spot("hg-spot-3", D("300")) == first
    creates = [c for c in sim.calls.query("bybit", "/v5/order/create") if c["method"] == "POST"]
    assert [c["ret_code"] for c in creates] == [0, 170141]  # Bybit's spot "Duplicate clientOrderId."
    assert len(sim.bybit.spot_orders["desk"]) == 1


async def test_a_buy_timing_out_after_the_venue_filled_it_is_not_bought_twice(sim, desk: BybitVenue):
    sim.faults.add("bybit", "timeout_after_accept", 1, path="/v5/order/create")
    fill = await desk.buy_spot("hg-spot-4", D("200"))
    creates = [c for c in sim.calls.query("bybit", "/v5/order/create") if c["method"] == "POST"]
    assert len(creates) == 1 and creates[0].get("held")
    assert balances(sim)["BTC"] == fill.btc_received and len(sim.bybit.spot_orders["desk"]) == 1


async def test_insufficient_usdt_is_refused_and_nothing_moves(sim, desk: BybitVenue):
    with pytest.raises(OrderRejected) as refused:
        await desk.buy_spot("hg-spot-5", D("100000.01"))
    assert refused.value.reason == RejectReason.INSUFFICIENT_BALANCE and refused.value.code == 170131
    assert "hg-spot-5" in str(refused.value) and "100000.01 USDT" in str(refused.value)
    assert balances(sim) == {"USDT": START_USDT}
    assert await desk._spot_order("hg-spot-5") is None  # nothing was placed: the id stays free


async def test_usdt_held_as_perp_margin_cannot_be_spent_on_spot(sim, desk: BybitVenue):
    from models.venue import OrderRequest, OrderType

    await desk.place_order(OrderRequest(symbol="BTCUSDT", client_order_id="hg-perp-1", side="sell", qty=D("10"),
                                        type=OrderType.MARKET))  # ~60,000 USDT of margin at 10x
    available = sim.engines["bybit"].account_by_name("desk").available()
    assert available < D("45000")
    with pytest.raises(OrderRejected) as refused:
        await desk.buy_spot("hg-spot-6", available + 1)
    assert refused.value.reason == RejectReason.INSUFFICIENT_BALANCE


async def test_amounts_are_cut_to_the_cent_and_nothing_is_refused(sim, desk: BybitVenue):
    for bad in (D("0.009"), D(0), D(-5), D("NaN")):
        with pytest.raises(ValueError):
            await desk.buy_spot("hg-spot-7", bad)
    with pytest.raises(ValueError):
        await desk.buy_spot("not a valid id!", D("100"))
    assert not [c for c in sim.calls.query("bybit", "/v5/order/create")]


async def test_spot_orders_stay_out_of_the_perp_book(sim, desk: BybitVenue):
    await desk.buy_spot("hg-spot-8", D("1000"))
    assert (await desk.position("BTCUSDT")).size == 0
    assert await desk.open_orders("BTCUSDT") == []
    assert await desk.order_by_client_id("BTCUSDT", "hg-spot-8") is None
    assert await desk.fills_for_order("BTCUSDT", "hg-spot-8") == []
    account = sim.engines["bybit"].account_by_name("desk")
    assert account.orders == [] and account.fills == [] and all(p.size == 0 for p in account.positions.values())
    linear = await desk._call("private_get_v5_order_history", {"category": "linear", "symbol": "BTCUSDT"})
    assert linear["result"]["list"] == []


async def test_the_emulator_sells_spot_and_refuses_what_bybit_refuses(sim, desk: BybitVenue):
    from activities.venue import VenueError

    await desk.buy_spot("hg-spot-9", D("6000.50"))
    btc = balances(sim)["BTC"]
    order = {"category": "spot", "symbol": "BTCUSDT", "side": "Sell", "orderType": "Market", "qty": "0.05",
             "orderLinkId": "hg-spot-10"}  # Sell: qty is BTC by default
    await desk._call("private_post_v5_order_create", order)
    row = (await desk._call("private_get_v5_order_realtime", {"category": "spot", "orderLinkId": "hg-spot-10"})
           )["result"]["list"][0]
    assert (row["marketUnit"], row["avgPrice"], row["cumExecQty"]) == ("baseCoin", "59997", "0.05")
    assert row["cumFeeDetail"] == {"USDT": str(D("0.05") * D("59997") * D("0.001"))}  # selling: fee in USDT
    assert balances(sim)["BTC"] == btc - D("0.05")

    async def code(**changes) -> int | str | None:
        with pytest.raises(VenueError) as err:
            await desk._call("private_post_v5_order_create", {**order, **changes})
        return err.value.code

    assert await code(orderLinkId="hg-spot-10") == 170141  # duplicate
    assert await code(orderLinkId="hg-spot-11", qty="5") == 170131  # more BTC than held
    assert await code(orderLinkId="hg-spot-12", qty="0.0000001") == 170137  # below base precision
    assert await code(orderLinkId="hg-spot-13", side="Buy", qty="10.001", marketUnit="") == 170148  # sub-cent
    assert await code(orderLinkId="hg-spot-14", side="Buy", qty="0.5", marketUnit="") == 170136  # below min qty
    assert await code(orderLinkId="hg-spot-15", symbol="DOGEUSDT") == 170121
    assert await code(orderLinkId="hg-spot-16", orderType="Limit", price="50000") == 170116


# -- the public ticker stream -------------------------------------------------------------------------------
async def tickers_for(ws: aiohttp.ClientWebSocketResponse, seconds: float) -> list[dict]:
    """Every ticker push received within `seconds`."""
    got, deadline = [], time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg = await ws.receive(timeout=left)
        except TimeoutError:
            break
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        data = json.loads(msg.data)
        if data.get("topic") == "tickers.BTCUSDT":
            got.append(data)
    return got


@pytest.fixture
async def ticker_ws(sim):
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{sim.urls['bybit'].replace('http', 'ws')}/v5/public/linear") as ws:
            await ws.send_json({"op": "subscribe", "args": ["tickers.BTCUSDT"], "req_id": "t1"})
            ack = await ws.receive_json(timeout=5)
            assert ack["success"] and ack["op"] == "subscribe"
            snapshot = await ws.receive_json(timeout=5)
            assert snapshot["topic"] == "tickers.BTCUSDT" and snapshot["data"]["lastPrice"] == "60000"
            yield ws


async def test_the_ticker_stream_keeps_pushing_while_the_price_stands_still(sim, ticker_ws):
    pushes = await tickers_for(ticker_ws, 2.5)
    assert len(pushes) >= 2
    assert {p["data"]["lastPrice"] for p in pushes} == {"60000"} and pushes[-1]["ts"] > pushes[0]["ts"]


async def test_ws_silence_stops_the_pushes_with_the_socket_open_then_they_resume(sim, ticker_ws):
    fault = await control(sim, "/control/fault", {"venue": "bybit", "kind": "ws_silence", "seconds": 2})
    assert fault["kind"] == "ws_silence" and fault["seconds"] == 2 and 0 < fault["remaining_s"] <= 2
    await tickers_for(ticker_ws, 0.2)  # whatever was on the wire before the fault
    sim.market.set_price("BTCUSDT", D("58000"))  # a move during the silence is not pushed either
    assert await tickers_for(ticker_ws, 1.3) == []
    await ticker_ws.send_json({"op": "ping", "req_id": "p1"})  # the socket is alive: it answers pings
    pong = await ticker_ws.receive_json(timeout=2)
    assert pong["op"] == "ping" and pong["ret_msg"] == "pong"
    resumed = await tickers_for(ticker_ws, 2.0)
    assert resumed and resumed[0]["data"]["lastPrice"] == "58000"
    assert not ticker_ws.closed and sim.faults.active() == []


async def test_ws_silence_is_validated(sim):
    async with aiohttp.ClientSession() as http:
        for body, error in (({"venue": "bybit", "kind": "ws_silence"}, "seconds"),
                            ({"venue": "bybit", "kind": "ws_silence", "seconds": -1}, "seconds"),
                            ({"venue": "binanceusdm", "kind": "ws_silence", "seconds": 1}, "bybit")):
            async with http.post(f"{sim.urls['control']}/control/fault", json=body) as resp:
                assert resp.status == 400 and error in (await resp.json())["error"]


async def test_a_silence_does_not_touch_rest_calls(sim, desk: BybitVenue):
    sim.faults.add("bybit", "ws_silence", seconds=5)
    fill = await desk.buy_spot("hg-spot-20", D("100"))  # private REST still answers
    assert fill.btc_bought > 0 and sim.faults.silenced("bybit")
