"""The emulators check requests the way the venues document it, independently of ccxt: a request signed
by hand per the venue's rules passes, and each way of getting it wrong gets the venue's own answer."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from decimal import Decimal as D

import aiohttp
import pytest

KEY, SECRET = "hand-key", "hand-secret"


def sig(payload: str, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


@pytest.fixture
def accounts(sim):
    for venue in ("bybit", "binanceusdm"):
        sim.engines[venue].create_account("hand", KEY, SECRET, {"USDT": D("1000")})


def with_timestamp(change: dict) -> dict:
    """Offsets become timestamps when the request is made, not when tests are collected."""
    change = dict(change)
    if "ts_offset_ms" in change:
        change["ts"] = int(time.time() * 1000) + change.pop("ts_offset_ms")
    return change


async def bybit(sim, method: str, path: str, *, query: str = "", body: dict | None = None, ts: int | None = None,
                secret: str = SECRET, key: str = KEY, recv: int = 5000):
    ts = ts if ts is not None else int(time.time() * 1000)
    text = json.dumps(body) if body is not None else ""
    headers = {"X-BAPI-API-KEY": key, "X-BAPI-TIMESTAMP": str(ts), "X-BAPI-RECV-WINDOW": str(recv),
               "X-BAPI-SIGN": sig(f"{ts}{key}{recv}{text if method == 'POST' else query}", secret),
               "Content-Type": "application/json"}
    url = f"{sim.urls['bybit']}{path}" + (f"?{query}" if query else "")
    async with aiohttp.ClientSession() as http, http.request(method, url, data=text or None, headers=headers) as r:
        return r.status, await r.json()


async def binance(sim, method: str, path: str, params: str, *, ts: int | None = None, secret: str = SECRET,
                  key: str | None = KEY, recv: int = 5000):
    ts = ts if ts is not None else int(time.time() * 1000)
    query = f"{params}&timestamp={ts}&recvWindow={recv}".lstrip("&")
    signed = f"{query}&signature={sig(query, secret)}"
    headers = {"X-MBX-APIKEY": key} if key else {}
    url = f"{sim.urls['binanceusdm']}{path}"
    async with aiohttp.ClientSession() as http:
        if method == "POST":
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            async with http.post(url, data=signed, headers=headers) as r:
                return r.status, await r.json()
        async with http.request(method, f"{url}?{signed}", headers=headers) as r:
            return r.status, await r.json()


async def test_bybit_accepts_a_hand_signed_get_and_post(sim, accounts):
    status, data = await bybit(sim, "GET", "/v5/position/list", query="category=linear&symbol=BTCUSDT")
    assert status == 200 and data["retCode"] == 0 and data["result"]["list"][0]["size"] == "0"
    status, data = await bybit(sim, "POST", "/v5/order/create", body={
        "category": "linear", "symbol": "BTCUSDT", "side": "Sell", "orderType": "Limit", "qty": "0.001",
        "price": "61000", "timeInForce": "PostOnly", "orderLinkId": "hand-1"})
    assert data["retCode"] == 0 and data["result"]["orderLinkId"] == "hand-1"


@pytest.mark.parametrize("change,code", [
    ({"secret": "wrong"}, 10004), ({"key": "nobody"}, 10003),
    ({"ts_offset_ms": -6_000}, 10002),  # older than the 5 s recv window
    ({"ts_offset_ms": 5_000}, 10002),  # more than 1 s ahead of the server
])
async def test_bybit_refusals(sim, accounts, change, code):
    change = with_timestamp(change)
    status, data = await bybit(sim, "GET", "/v5/position/list", query="category=linear&symbol=BTCUSDT", **change)
    assert (status, data["retCode"]) == (200, code) and data["result"] == {}


async def test_bybit_signature_covers_the_query_string(sim, accounts):
    ts = int(time.time() * 1000)
    headers = {"X-BAPI-API-KEY": KEY, "X-BAPI-TIMESTAMP": str(ts), "X-BAPI-RECV-WINDOW": "5000",
               "X-BAPI-SIGN": sig(f"{ts}{KEY}5000category=linear&symbol=BTCUSDT")}
    url = f"{sim.urls['bybit']}/v5/position/list?category=linear&symbol=ETHUSDT"  # not what was signed
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as r:
        assert (await r.json())["retCode"] == 10004


async def test_binance_accepts_hand_signed_requests(sim, accounts):
    status, data = await binance(sim, "GET", "/fapi/v3/positionRisk", "symbol=BTCUSDT")
    assert status == 200 and data[0]["positionAmt"] == "0"
    status, data = await binance(sim, "POST", "/fapi/v1/order", "symbol=BTCUSDT&side=SELL&type=LIMIT&timeInForce=GTX"
                                 "&quantity=0.002&price=61000&newClientOrderId=hand-1")
    assert status == 200 and data["clientOrderId"] == "hand-1" and data["timeInForce"] == "GTX"
    status, data = await binance(sim, "POST", "/fapi/v1/order", "symbol=BTCUSDT&side=SELL&type=LIMIT&timeInForce=GTX"
                                 "&quantity=0.002&price=61000&newClientOrderId=hand-1")
    assert (status, data["code"]) == (400, -4116)


@pytest.mark.parametrize("change,status,code", [
    ({"secret": "wrong"}, 400, -1022), ({"key": "nobody"}, 401, -2015), ({"key": None}, 401, -2014),
    ({"ts_offset_ms": -6_000}, 400, -1021), ({"ts_offset_ms": 2_000}, 400, -1021),
])
async def test_binance_refusals(sim, accounts, change, status, code):
    change = with_timestamp(change)
    got_status, data = await binance(sim, "GET", "/fapi/v3/positionRisk", "symbol=BTCUSDT", **change)
    assert (got_status, data["code"]) == (status, code)


async def test_binance_rate_limit_is_429_with_retry_after(sim, accounts):
    sim.faults.add("binanceusdm", "rate_limit", 1)
    async with aiohttp.ClientSession() as http:
        ts = int(time.time() * 1000)
        query = f"symbol=BTCUSDT&timestamp={ts}"
        async with http.get(f"{sim.urls['binanceusdm']}/fapi/v1/openOrders?{query}&signature={sig(query)}",
                            headers={"X-MBX-APIKEY": KEY}) as r:
            assert r.status == 429 and r.headers["Retry-After"] == "1" and (await r.json())["code"] == -1003


async def test_bybit_private_websocket_auth(sim, accounts):
    ws_url = sim.urls["bybit"].replace("http", "ws") + "/v5/private"
    async with aiohttp.ClientSession() as http:
        for secret, ok in (("wrong", False), (SECRET, True)):
            async with http.ws_connect(ws_url) as ws:
                expires = int(time.time() * 1000) + 10_000
                await ws.send_json({"op": "auth", "args": [KEY, expires, sig(f"GET/realtime{expires}", secret)]})
                reply = await ws.receive_json(timeout=5)
                assert reply["op"] == "auth" and reply["success"] is ok
