"""Bybit V5 over loopback: REST (market, order, execution, position, account, crypto loan) and WebSocket
(public tickers; private order, execution, position), with Bybit's envelope, field names, retCodes and
request signing (HMAC-SHA256 of timestamp + key + recvWindow + query-or-body, within the recv window).

Where Bybit and a naive emulator would differ, this follows Bybit: a post-only order that would cross is
accepted and then cancelled with rejectReason EC_PostOnlyWillTakeLiquidity; errors come back as HTTP 200
with a non-zero retCode; the public ticker stream pushes at least once a second whether the price moved
or not.

Spot (category=spot, BTCUSDT): market orders only, filled at once and whole at the touch (buy at the ask,
sell at the bid) of the same price the perps trade at; a Buy's qty is USDT to spend unless marketUnit is
baseCoin; taker fee 0.1 % in the coin received. They move the account's coin balances, are kept apart from
the perp engine (no positions, not in linear orders or executions, no websocket pushes) and are read back
with order/realtime and order/history. Spot errors carry Bybit's spot retCodes (170xxx).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Any

from aiohttp import WSMsgType, web

from sim.common import ACCOUNT, PARAMS, VenueContext, hmac_hex, hold, json_response, num, same, seven_day_window
from sim.engine import Account, Fill, Order, Position, Reject, RejectReason, Status
from sim.market import wall_ms

RECV_WINDOW_DEFAULT = 5000
CATEGORY = "linear"
TICKER_INTERVAL_S = 1.0  # public tickers are pushed at least this often, moved or not

REJECT_CODES = {
    RejectReason.DUPLICATE_CLIENT_ID: (110072, "OrderLinkedID is duplicate"),
    RejectReason.INSUFFICIENT_BALANCE: (110007, "ab not enough for new order"),
    RejectReason.REDUCE_ONLY: (110017, "current position is zero, cannot fix reduce-only order qty"),
    RejectReason.NOT_FOUND: (110001, "order not exists or too late to cancel"),
    RejectReason.NOT_CANCELLABLE: (110001, "order not exists or too late to cancel"),
    RejectReason.BAD_QTY: (10001, "params error: qty"),
    RejectReason.BAD_PRICE: (10001, "params error: price"),
    RejectReason.UNKNOWN_SYMBOL: (10001, "params error: symbol invalid"),
    RejectReason.INJECTED: (10001, "params error: rejected"),
}
ORDER_STATUS = {Status.NEW: "New", Status.PARTIALLY_FILLED: "PartiallyFilled", Status.FILLED: "Filled",
                Status.CANCELLED: "Cancelled", Status.EXPIRED: "Cancelled", Status.REJECTED: "Rejected"}


OTHER_CATEGORIES = ("inverse", "spot", "option")  # real categories this emulator lists nothing in (spot: where
# a handler takes it, see _category)
SPOT = "spot"
SPOT_TAKER_FEE = Decimal("0.001")


@dataclass(frozen=True)
class SpotInstrument:
    """Bybit's spot filters (instruments-info category=spot, as listed for BTCUSDT)."""

    symbol: str
    base: str
    quote: str
    tick: Decimal  # priceFilter.tickSize; a market order's quote amount is on this step too
    base_precision: Decimal
    quote_precision: Decimal
    min_qty: Decimal
    max_qty: Decimal
    min_amount: Decimal
    max_amount: Decimal


SPOT_INSTRUMENTS = {"BTCUSDT": SpotInstrument("BTCUSDT", "BTC", "USDT", Decimal("0.01"), Decimal("0.000001"),
                                              Decimal("0.00000001"), Decimal("0.000048"), Decimal("71.73956243"),
                                              Decimal("1"), Decimal("2000000"))}


@dataclass
class SpotOrder:
    """A spot market order, filled when placed."""

    order_id: str
    client_id: str
    symbol: str
    side: str  # Buy | Sell
    qty: Decimal  # as sent: quote coin or base coin, per market_unit
    market_unit: str  # quoteCoin | baseCoin
    price: Decimal
    exec_qty: Decimal  # base coin
    exec_value: Decimal  # quote coin
    fee: Decimal
    fee_coin: str
    created_ms: int


class EmptyCategory(Exception):
    """A read for a category the emulator does not trade: Bybit would answer an (empty) list."""


class BybitError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def envelope(result: Any, code: int = 0, message: str = "OK") -> dict[str, Any]:
    return {"retCode": code, "retMsg": message, "result": result if result is not None else {}, "retExtInfo": {},
            "time": wall_ms()}


def dec(params: dict[str, Any], name: str, *, required: bool = True) -> Decimal | None:
    value = params.get(name)
    if value in (None, ""):
        if required:
            raise BybitError(10001, f"params error: {name} is required")
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise BybitError(10001, f"params error: {name} invalid") from None


# -- renderers ------------------------------------------------------------------------------------
def render_order(order: Order) -> dict[str, Any]:
    tif = {"PostOnly": "PostOnly", "IOC": "IOC", "FOK": "FOK"}.get(order.tif, "GTC")
    cancel_type = "UNKNOWN"
    if order.status == Status.CANCELLED and order.reject_reason:
        cancel_type = "CancelByPostOnly" if "PostOnly" in order.reject_reason else "CancelByUser"
    elif order.status == Status.CANCELLED:
        cancel_type = "CancelByUser"
    return {
        "orderId": order.order_id, "orderLinkId": order.client_id, "blockTradeId": "", "symbol": order.symbol,
        "price": num(order.price) if order.price is not None else "0", "qty": num(order.qty),
        "side": "Buy" if order.side == "buy" else "Sell", "isLeverage": "", "positionIdx": 0,
        "orderStatus": ORDER_STATUS[order.status], "createType": "CreateByUser", "cancelType": cancel_type,
        "rejectReason": order.reject_reason or "EC_NoError", "avgPrice": num(order.avg_price) if order.filled else "",
        "leavesQty": num(order.leaves), "leavesValue": num(order.leaves * (order.price or Decimal(0))),
        "cumExecQty": num(order.filled), "cumExecValue": num(order.cum_value), "cumExecFee": num(order.cum_fee),
        "timeInForce": tif, "orderType": "Limit" if order.type == "limit" else "Market", "stopOrderType": "",
        "orderIv": "", "triggerPrice": "", "takeProfit": "", "stopLoss": "", "tpTriggerBy": "", "slTriggerBy": "",
        "triggerDirection": 0, "triggerBy": "", "lastPriceOnCreated": "", "reduceOnly": order.reduce_only,
        "closeOnTrigger": False, "smpType": "None", "smpGroup": 0, "smpOrderId": "", "tpslMode": "",
        "tpLimitPrice": "", "slLimitPrice": "", "placeType": "", "createdTime": str(order.created_ms),
        "updatedTime": str(order.updated_ms),
    }


def render_spot_order(order: SpotOrder) -> dict[str, Any]:
    return {
        "orderId": order.order_id, "orderLinkId": order.client_id, "blockTradeId": "", "symbol": order.symbol,
        "price": "0", "qty": num(order.qty), "side": order.side, "isLeverage": "0", "positionIdx": 0,
        "orderStatus": "Filled", "createType": "CreateByUser", "cancelType": "UNKNOWN", "rejectReason": "EC_NoError",
        "avgPrice": num(order.price), "leavesQty": "0", "leavesValue": "0", "cumExecQty": num(order.exec_qty),
        "cumExecValue": num(order.exec_value), "cumExecFee": num(order.fee), "cumFeeDetail": {order.fee_coin: num(order.fee)},
        "timeInForce": "IOC", "orderType": "Market", "stopOrderType": "", "orderIv": "", "marketUnit": order.market_unit,
        "triggerPrice": "0", "takeProfit": "0", "stopLoss": "0", "tpTriggerBy": "", "slTriggerBy": "",
        "triggerDirection": 0, "triggerBy": "", "lastPriceOnCreated": "", "reduceOnly": False, "closeOnTrigger": False,
        "smpType": "None", "smpGroup": 0, "smpOrderId": "", "placeType": "", "createdTime": str(order.created_ms),
        "updatedTime": str(order.created_ms),
    }


def render_execution(fill: Fill, order: Order | None) -> dict[str, Any]:
    return {
        "symbol": fill.symbol, "orderId": fill.order_id, "orderLinkId": fill.client_id,
        "side": "Buy" if fill.side == "buy" else "Sell",
        "orderPrice": num(order.price) if order and order.price is not None else "0",
        "orderQty": num(order.qty) if order else "0", "leavesQty": num(order.leaves) if order else "0",
        "createType": "CreateByUser" if fill.exec_type == "Trade" else "", "orderType":
            ("Limit" if order and order.type == "limit" else "Market") if order else "UNKNOWN",
        "stopOrderType": "", "execFee": num(fill.fee), "execId": fill.exec_id, "execPrice": num(fill.price),
        "execQty": num(fill.qty), "execType": fill.exec_type, "execValue": num(fill.value),
        "execTime": str(fill.ts_ms), "feeCurrency": "USDT", "isMaker": fill.is_maker, "feeRate": num(fill.fee_rate),
        "tradeIv": "", "markIv": "", "markPrice": num(fill.price), "indexPrice": "", "underlyingPrice": "",
        "blockTradeId": "", "closedSize": "", "seq": fill.seq, "extraFees": "",
    }


def render_position(pos: Position, mark: Decimal, mmr: Decimal, *, ws: bool = False) -> dict[str, Any]:
    size = abs(pos.size)
    side = "" if pos.size == 0 else ("Buy" if pos.size > 0 else "Sell")
    liq = pos.liquidation_price(mmr)
    data = {
        "positionIdx": 0, "riskId": 1, "riskLimitValue": "2000000", "symbol": pos.symbol, "side": side,
        "size": num(size), "avgPrice": num(pos.entry), "positionValue": num(size * pos.entry),
        "tradeMode": 1, "autoAddMargin": 0, "positionStatus": "Normal", "leverage": num(pos.leverage),
        "markPrice": num(mark), "liqPrice": num(liq, 2) if liq is not None else "",
        "bustPrice": "", "positionIM": num(pos.margin), "positionMM": num(size * mark * mmr),
        "positionBalance": num(pos.margin), "takeProfit": "0", "stopLoss": "0", "trailingStop": "0",
        "unrealisedPnl": num(pos.unrealised(mark)), "curRealisedPnl": num(pos.realised),
        "cumRealisedPnl": num(pos.realised), "adlRankIndicator": 0, "createdTime": str(pos.created_ms),
        "updatedTime": str(pos.updated_ms), "seq": 0, "isReduceOnly": False, "tpslMode": "Full",
    }
    if ws:
        data["entryPrice"] = data.pop("avgPrice")
        data["category"] = CATEGORY
    return data


class BybitApp:
    def __init__(self, ctx: VenueContext) -> None:
        self.ctx = ctx
        self.sockets: set[web.WebSocketResponse] = set()
        self._public: dict[web.WebSocketResponse, tuple[set[str], asyncio.Queue]] = {}
        self._private: dict[web.WebSocketResponse, tuple[Account, set[str], asyncio.Queue]] = {}
        self._conn_ids = itertools.count(1)
        self.connections_opened = 0
        self.ticker_interval_s = TICKER_INTERVAL_S
        self.spot_orders: dict[str, list[SpotOrder]] = {}  # by account name, oldest first
        self._spot_ids = itertools.count(1)
        ctx.market.subscribe(self._on_price)
        ctx.engine.subscribe(self._on_engine)

    def build(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        r = app.router
        r.add_get("/v5/market/time", self.market_time)
        r.add_get("/v5/market/instruments-info", self.instruments_info)
        r.add_get("/v5/market/tickers", self.tickers)
        r.add_post("/v5/order/create", self.order_create)
        r.add_get("/v5/order/realtime", self.order_realtime)
        r.add_get("/v5/order/history", self.order_history)
        r.add_post("/v5/order/cancel", self.order_cancel)
        r.add_get("/v5/execution/list", self.execution_list)
        r.add_get("/v5/position/list", self.position_list)
        r.add_post("/v5/position/set-leverage", self.set_leverage)
        r.add_post("/v5/position/add-margin", self.add_margin)
        r.add_get("/v5/account/wallet-balance", self.wallet_balance)
        r.add_post("/v5/crypto-loan-flexible/repay", self.loan_repay)
        r.add_get("/v5/crypto-loan-flexible/ongoing-coin", self.loan_ongoing)
        r.add_get("/v5/crypto-loan-flexible/repayment-history", self.loan_repayments)
        r.add_post("/v5/crypto-loan-common/adjust-ltv", self.loan_adjust)
        r.add_get("/v5/crypto-loan-common/adjustment-history", self.loan_adjustments)
        r.add_get("/v5/crypto-loan-common/position", self.loan_position)
        r.add_get("/v5/public/linear", self.ws_public)
        r.add_get("/v5/private", self.ws_private)
        return app

    # -- plumbing -------------------------------------------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler):
        path = request.path
        if path in ("/v5/public/linear", "/v5/private"):
            return await handler(request)
        private = path.startswith("/v5/") and not path.startswith("/v5/market/")
        order_entry = path == "/v5/order/create"
        body = await request.text() if request.method == "POST" else ""
        entry: dict[str, Any] = {"venue": "bybit", "method": request.method, "path": path, "ts_ms": wall_ms(),
                                 "query": request.rel_url.raw_query_string, "referer": request.headers.get("Referer")}
        self.ctx.calls.add(entry)  # logged on arrival; the outcome is filled in below
        fault = self.ctx.faults.take("bybit", path, method=request.method, order_entry=order_entry, private=private)
        try:
            if fault and fault.kind == "latency":
                await asyncio.sleep(float(fault.params.get("ms", 500)) / 1000)
            if fault and fault.kind == "http500":
                entry["status"] = 500
                return web.Response(status=500, text="Internal Server Error")
            if fault and fault.kind == "rate_limit":
                entry.update(status=200, ret_code=10006)
                reset = wall_ms() + int(fault.params.get("reset_ms", 1000))
                return json_response(envelope({}, 10006, "Too many visits. Exceeded the API Rate Limit."),
                                     headers={"X-Bapi-Limit": "10", "X-Bapi-Limit-Status": "0",
                                              "X-Bapi-Limit-Reset-Timestamp": str(reset)})
            account = self._authenticate(request, body) if private else None
            entry["account"] = account.name if account else None
            if fault and fault.kind == "reject":
                raise BybitError(int(fault.params.get("code", 10001)), fault.params.get("message", "params error"))
            request[ACCOUNT] = account
            request[PARAMS] = json.loads(body) if body else dict(request.query)
            response = await handler(request)
            if fault and fault.kind == "timeout_after_accept":
                entry["held"] = True
                await hold(self.ctx, fault.params)
            entry.update(status=response.status, ret_code=0)
            if private:
                response.headers.update({"X-Bapi-Limit": "10", "X-Bapi-Limit-Status": "9",
                                         "X-Bapi-Limit-Reset-Timestamp": str(wall_ms() + 1000)})
            return response
        except EmptyCategory as empty:
            if order_entry:
                entry.update(status=200, ret_code=10001)
                return json_response(envelope({}, 10001, f"params error: category {empty.args[0]} not traded here"))
            entry.update(status=200, ret_code=0)
            return json_response(envelope({"category": empty.args[0], "list": [], "nextPageCursor": ""}))
        except BybitError as err:
            entry.update(status=200, ret_code=err.code, ret_msg=err.message)
            return json_response(envelope({}, err.code, err.message))
        except Reject as rej:
            code, message = REJECT_CODES[rej.reason]
            entry.update(status=200, ret_code=code, ret_msg=rej.message)
            return json_response(envelope({}, code, f"{message} ({rej.message})"))

    def _authenticate(self, request: web.Request, body: str) -> Account:
        key = request.headers.get("X-BAPI-API-KEY", "")
        account = self.ctx.engine.accounts.get(key)
        if account is None:
            raise BybitError(10003, "API key is invalid.")
        try:
            timestamp = int(request.headers.get("X-BAPI-TIMESTAMP", ""))
            recv_window = int(request.headers.get("X-BAPI-RECV-WINDOW", RECV_WINDOW_DEFAULT))
        except ValueError:
            raise BybitError(10001, "params error: timestamp or recv_window invalid") from None
        server = wall_ms()
        if not server - recv_window <= timestamp < server + 1000:
            raise BybitError(10002, "invalid request, please check your server timestamp or recv_window param. "
                                    f"req_timestamp[{timestamp}],server_timestamp[{server}],recv_window[{recv_window}]")
        payload = body if request.method == "POST" else request.rel_url.raw_query_string
        expected = hmac_hex(account.secret, f"{timestamp}{key}{recv_window}{payload}")
        if not same(expected, request.headers.get("X-BAPI-SIGN", "")):
            raise BybitError(10004, "error sign! origin_string[...]")
        return account

    def _category(self, params: dict[str, Any], *, required: bool = True, spot: bool = False) -> str:
        """The request's category: linear, or spot where the handler takes it (`spot`); other real categories
        answer an empty list."""
        category = params.get("category")
        if spot and category == SPOT:
            return SPOT
        if category in OTHER_CATEGORIES:
            raise EmptyCategory(category)
        if category != CATEGORY and (required or category):
            raise BybitError(10001, f"params error: category {category!r} invalid")
        return CATEGORY

    # -- market ---------------------------------------------------------------------------------
    async def market_time(self, request: web.Request) -> web.Response:
        now = time.time_ns()
        return json_response(envelope({"timeSecond": str(now // 1_000_000_000), "timeNano": str(now)}))

    async def instruments_info(self, request: web.Request) -> web.Response:
        params = request[PARAMS]
        if self._category(params, spot=True) == SPOT:
            rows = [{"symbol": i.symbol, "baseCoin": i.base, "quoteCoin": i.quote, "innovation": "0", "status": "Trading",
                     "marginTrading": "utaOnly", "stTag": "0",
                     "lotSizeFilter": {"basePrecision": num(i.base_precision), "quotePrecision": num(i.quote_precision),
                                       "minOrderQty": num(i.min_qty), "maxOrderQty": num(i.max_qty),
                                       "minOrderAmt": num(i.min_amount), "maxOrderAmt": num(i.max_amount)},
                     "priceFilter": {"tickSize": num(i.tick)},
                     "riskParameters": {"priceLimitRatioX": "0.05", "priceLimitRatioY": "0.05"}}
                    for i in SPOT_INSTRUMENTS.values() if not params.get("symbol") or params["symbol"] == i.symbol]
            return json_response(envelope({"category": SPOT, "list": rows, "nextPageCursor": ""}))
        rows = []
        if params.get("status") not in ("PreLaunch", "Delivering", "Closed"):
            for inst in self.ctx.engine.instruments.values():
                if params.get("symbol") and params["symbol"] != inst.symbol:
                    continue
                rows.append({
                    "symbol": inst.symbol, "contractType": "LinearPerpetual", "status": "Trading",
                    "baseCoin": inst.base, "quoteCoin": inst.quote, "settleCoin": inst.quote,
                    "launchTime": "1584230400000", "deliveryTime": "0", "deliveryFeeRate": "", "priceScale": "2",
                    "leverageFilter": {"minLeverage": "1", "maxLeverage": num(inst.max_leverage),
                                       "leverageStep": "0.01"},
                    "priceFilter": {"minPrice": num(inst.tick), "maxPrice": "1999999.80", "tickSize": num(inst.tick)},
                    "lotSizeFilter": {"maxOrderQty": num(inst.max_qty), "minOrderQty": num(inst.min_qty),
                                      "qtyStep": num(inst.qty_step), "postOnlyMaxOrderQty": num(inst.max_qty),
                                      "maxMktOrderQty": num(inst.max_market_qty), "minNotionalValue": num(inst.min_notional)},
                    "unifiedMarginTrade": True, "fundingInterval": 480, "settleCoin_": inst.quote,
                    "copyTrading": "both", "upperFundingRate": "0.005", "lowerFundingRate": "-0.005",
                    "isPreListing": False, "preListingInfo": None,
                })
        return json_response(envelope({"category": CATEGORY, "list": rows, "nextPageCursor": ""}))

    def ticker_row(self, symbol: str) -> dict[str, Any]:
        quote = self.ctx.market.quote(symbol)
        bid, ask = self.ctx.engine.touch(symbol)
        return {
            "symbol": symbol, "lastPrice": num(quote.last), "indexPrice": num(quote.index),
            "markPrice": num(quote.mark), "prevPrice24h": num(quote.last), "price24hPcnt": "0",
            "highPrice24h": num(quote.last), "lowPrice24h": num(quote.last), "prevPrice1h": num(quote.last),
            "openInterest": "0", "openInterestValue": "0", "turnover24h": "0", "volume24h": "0",
            "fundingRate": num(quote.funding_rate), "nextFundingTime": str(self._next_funding_ms()),
            "predictedDeliveryPrice": "", "basisRate": "", "deliveryFeeRate": "", "deliveryTime": "0",
            "ask1Size": num(self.ctx.engine.config.level_qty), "bid1Price": num(bid), "ask1Price": num(ask),
            "bid1Size": num(self.ctx.engine.config.level_qty), "basis": "", "fundingIntervalHour": "8",
        }

    def _next_funding_ms(self) -> int:
        now = self.ctx.market.clock.now()
        epoch_h = int(now.timestamp() // 3600)
        return ((epoch_h // 8) + 1) * 8 * 3600 * 1000

    def spot_ticker_row(self, symbol: str) -> dict[str, Any]:
        last = self.ctx.market.quote(symbol).last
        bid, ask = self.ctx.engine.touch(symbol)
        size = num(self.ctx.engine.config.level_qty)
        return {"symbol": symbol, "bid1Price": num(bid), "bid1Size": size, "ask1Price": num(ask), "ask1Size": size,
                "lastPrice": num(last), "prevPrice24h": num(last), "price24hPcnt": "0", "highPrice24h": num(last),
                "lowPrice24h": num(last), "turnover24h": "0", "volume24h": "0", "usdIndexPrice": num(last)}

    async def tickers(self, request: web.Request) -> web.Response:
        params = request[PARAMS]
        if self._category(params, spot=True) == SPOT:
            symbols = [params["symbol"]] if params.get("symbol") else list(SPOT_INSTRUMENTS)
            if any(s not in SPOT_INSTRUMENTS for s in symbols):
                raise BybitError(10001, "params error: symbol invalid")
            return json_response(envelope({"category": SPOT, "list": [self.spot_ticker_row(s) for s in symbols]}))
        symbols = [params["symbol"]] if params.get("symbol") else list(self.ctx.engine.instruments)
        if any(s not in self.ctx.engine.instruments for s in symbols):
            raise BybitError(10001, "params error: symbol invalid")
        return json_response(envelope({"category": CATEGORY, "list": [self.ticker_row(s) for s in symbols]}))

    # -- orders ---------------------------------------------------------------------------------
    async def order_create(self, request: web.Request) -> web.Response:
        params, account = request[PARAMS], request[ACCOUNT]
        if self._category(params, spot=True) == SPOT:
            order = self._spot_place(account, params)
            return json_response(envelope({"orderId": order.order_id, "orderLinkId": order.client_id}))
        side = str(params.get("side", ""))
        order_type = str(params.get("orderType", ""))
        if side not in ("Buy", "Sell") or order_type not in ("Limit", "Market"):
            raise BybitError(10001, "params error: side or orderType invalid")
        link_id = str(params.get("orderLinkId") or "")
        if not link_id:
            raise BybitError(10001, "params error: orderLinkId is required by this emulator (idempotency)")
        if len(link_id) > 36:
            raise BybitError(10001, "params error: orderLinkId longer than 36 characters")
        tif = str(params.get("timeInForce") or "GTC")
        if tif not in ("GTC", "IOC", "FOK", "PostOnly"):
            raise BybitError(10001, f"params error: timeInForce {tif}")
        order = self.ctx.engine.place(
            account, symbol=str(params.get("symbol")), side=side.lower(), type=order_type.lower(), qty=dec(params, "qty"),
            price=dec(params, "price", required=order_type == "Limit"), tif=tif,
            reduce_only=bool(params.get("reduceOnly", False)), client_id=link_id)
        return json_response(envelope({"orderId": order.order_id, "orderLinkId": order.client_id}))

    def _orders(self, account: Account, params: dict[str, Any], *, open_only: bool) -> list[Order]:
        if params.get("orderId") or params.get("orderLinkId"):
            order = self.ctx.engine.find(account, order_id=params.get("orderId"), client_id=params.get("orderLinkId"))
            orders = [order] if order is not None else []
        else:
            orders = list(reversed(account.orders))
            orders = [o for o in orders if o.status.open] if open_only else [o for o in orders if not o.status.open]
        symbol = params.get("symbol")
        return [o for o in orders if not symbol or o.symbol == symbol][: int(params.get("limit") or 50)]

    def _spot_place(self, account: Account, params: dict[str, Any]) -> SpotOrder:
        inst = SPOT_INSTRUMENTS.get(str(params.get("symbol") or ""))
        if inst is None:
            raise BybitError(170121, "Invalid symbol.")
        side = str(params.get("side") or "")
        if side not in ("Buy", "Sell"):
            raise BybitError(170117, "Invalid side.")
        if params.get("orderType") != "Market":
            raise BybitError(170116, "Invalid orderType.")  # this emulator trades spot at market only
        link_id = str(params.get("orderLinkId") or "")
        if not link_id:
            raise BybitError(10001, "params error: orderLinkId is required by this emulator (idempotency)")
        if len(link_id) > 36:
            raise BybitError(10001, "params error: orderLinkId longer than 36 characters")
        unit = str(params.get("marketUnit") or ("quoteCoin" if side == "Buy" else "baseCoin"))
        if unit not in ("quoteCoin", "baseCoin"):
            raise BybitError(170130, "Data sent for paramter 'marketUnit' is not valid.")
        qty = dec(params, "qty")
        if not qty.is_finite() or qty <= 0:
            raise BybitError(170130, "Data sent for paramter 'qty' is not valid.")
        orders = self.spot_orders.setdefault(account.name, [])
        if any(o.client_id == link_id for o in orders):
            raise BybitError(170141, "Duplicate clientOrderId.")
        bid, ask = self.ctx.engine.touch(inst.symbol)
        price = ask if side == "Buy" else bid
        if unit == "quoteCoin":
            if qty % inst.tick:
                raise BybitError(170148, "Market order amount decimal too long.")
            base = (qty / price).quantize(inst.base_precision, rounding=ROUND_DOWN)
        else:
            if qty % inst.base_precision:
                raise BybitError(170137, "Order volume decimal too long.")
            base = qty
        value = base * price
        if base < inst.min_qty:
            raise BybitError(170136, "Order quantity lower than the minimum.")
        if base > inst.max_qty:
            raise BybitError(170135, "Order quantity too large.")
        if value < inst.min_amount:
            raise BybitError(170140, "Order value exceeded lower limit.")
        if value > inst.max_amount:
            raise BybitError(170124, "Order amount too large.")
        balances = account.balances
        if side == "Buy":
            # USDT free of perp margin and resting orders pays; a quote-amount order must be covered in full
            if (qty if unit == "quoteCoin" else value) > account.available():
                raise BybitError(170131, "Insufficient balance.")
            fee, fee_coin = base * SPOT_TAKER_FEE, inst.base
            balances[inst.quote] = balances.get(inst.quote, Decimal(0)) - value
            balances[inst.base] = balances.get(inst.base, Decimal(0)) + base - fee
        else:
            if base > balances.get(inst.base, Decimal(0)):
                raise BybitError(170131, "Insufficient balance.")
            fee, fee_coin = value * SPOT_TAKER_FEE, inst.quote
            balances[inst.base] -= base
            balances[inst.quote] = balances.get(inst.quote, Decimal(0)) + value - fee
        order = SpotOrder(order_id=str(2_000_000_000_000_000_000 + next(self._spot_ids)), client_id=link_id,
                          symbol=inst.symbol, side=side, qty=qty, market_unit=unit, price=price, exec_qty=base,
                          exec_value=value, fee=fee, fee_coin=fee_coin, created_ms=wall_ms())
        orders.append(order)
        return order

    def _spot_rows(self, account: Account, params: dict[str, Any], *, open_only: bool) -> list[dict[str, Any]]:
        orders = list(reversed(self.spot_orders.get(account.name, [])))
        if params.get("orderId"):
            orders = [o for o in orders if o.order_id == str(params["orderId"])]
        elif params.get("orderLinkId"):
            orders = [o for o in orders if o.client_id == params["orderLinkId"]]
        elif open_only:
            orders = []  # spot market orders are filled when placed: none is ever open
        symbol = params.get("symbol")
        return [render_spot_order(o) for o in orders if not symbol or o.symbol == symbol][: int(params.get("limit") or 50)]

    async def order_realtime(self, request: web.Request) -> web.Response:
        params = request[PARAMS]
        open_only = str(params.get("openOnly", "0")) == "0"
        if self._category(params, spot=True) == SPOT:
            return json_response(envelope({"category": SPOT, "nextPageCursor": "",
                                           "list": self._spot_rows(request[ACCOUNT], params, open_only=open_only)}))
        orders = self._orders(request[ACCOUNT], params, open_only=open_only)
        return json_response(envelope({"category": CATEGORY, "list": [render_order(o) for o in orders],
                                       "nextPageCursor": ""}))

    async def order_history(self, request: web.Request) -> web.Response:
        params = request[PARAMS]
        if self._category(params, spot=True) == SPOT:
            return json_response(envelope({"category": SPOT, "nextPageCursor": "",
                                           "list": self._spot_rows(request[ACCOUNT], params, open_only=False)}))
        orders = self._orders(request[ACCOUNT], params, open_only=False)
        return json_response(envelope({"category": CATEGORY, "list": [render_order(o) for o in orders],
                                       "nextPageCursor": ""}))

    async def order_cancel(self, request: web.Request) -> web.Response:
        params = request[PARAMS]
        self._category(params)
        if not params.get("orderId") and not params.get("orderLinkId"):
            raise BybitError(10001, "params error: orderId or orderLinkId is required")
        order = self.ctx.engine.cancel(request[ACCOUNT], order_id=params.get("orderId"),
                                       client_id=params.get("orderLinkId"))
        return json_response(envelope({"orderId": order.order_id, "orderLinkId": order.client_id}))

    # -- executions, positions, account ---------------------------------------------------------
    async def execution_list(self, request: web.Request) -> web.Response:
        params, account = request[PARAMS], request[ACCOUNT]
        self._category(params)
        fills = list(reversed(account.fills))  # newest first, as Bybit lists them
        for key, attr in (("symbol", "symbol"), ("orderId", "order_id"), ("orderLinkId", "client_id"),
                          ("execType", "exec_type")):
            if params.get(key):
                fills = [f for f in fills if getattr(f, attr) == params[key]]
        if not (params.get("orderId") or params.get("orderLinkId")):  # by order: any age
            begin, end = seven_day_window(params, BybitError(
                10001, "params error: the time range between startTime and endTime exceeds 7 days"), wall_ms())
            fills = [f for f in fills if begin <= f.ts_ms <= end]
        start = int(params.get("cursor") or 0)
        limit = min(int(params.get("limit") or params.get("size") or 50), 100)
        page = fills[start:start + limit]
        cursor = str(start + limit) if start + limit < len(fills) else ""
        return json_response(envelope({"category": CATEGORY, "nextPageCursor": cursor,
                                       "list": [render_execution(f, account.by_id.get(f.order_id)) for f in page]}))

    async def position_list(self, request: web.Request) -> web.Response:
        params, account = request[PARAMS], request[ACCOUNT]
        self._category(params)
        symbols = [params["symbol"]] if params.get("symbol") else list(self.ctx.engine.instruments)
        rows = []
        for symbol in symbols:
            inst = self.ctx.engine.instrument(symbol)
            pos = account.positions.get(symbol) or Position(symbol=symbol, leverage=account.lev(symbol))
            if params.get("symbol") or pos.size != 0:
                rows.append(render_position(pos, self.ctx.market.quote(symbol).mark, inst.maintenance_margin_rate))
        return json_response(envelope({"category": CATEGORY, "list": rows, "nextPageCursor": ""}))

    async def set_leverage(self, request: web.Request) -> web.Response:
        params, account = request[PARAMS], request[ACCOUNT]
        self._category(params)
        buy, sell = dec(params, "buyLeverage"), dec(params, "sellLeverage")
        if buy != sell:
            raise BybitError(10001, "params error: buyLeverage must equal sellLeverage in one-way mode")
        if account.lev(str(params.get("symbol"))) == buy:
            raise BybitError(110043, "Set leverage not modified")
        self.ctx.engine.set_leverage(account, str(params.get("symbol")), buy)
        return json_response(envelope({}))

    async def add_margin(self, request: web.Request) -> web.Response:
        params, account = request[PARAMS], request[ACCOUNT]
        self._category(params)
        symbol = str(params.get("symbol"))
        pos = self.ctx.engine.add_margin(account, symbol, dec(params, "margin"))
        inst = self.ctx.engine.instrument(symbol)
        return json_response(envelope({"category": CATEGORY, **render_position(
            pos, self.ctx.market.quote(symbol).mark, inst.maintenance_margin_rate)}))

    async def wallet_balance(self, request: web.Request) -> web.Response:
        account: Account = request[ACCOUNT]
        coins = []
        for coin, amount in sorted(account.balances.items()):
            held = account.balances.get(coin) - account.available() if coin == "USDT" else Decimal(0)
            coins.append({"coin": coin, "walletBalance": num(amount), "equity": num(amount), "usdValue": "",
                          "availableToWithdraw": num(amount - held), "locked": "0", "borrowAmount": "0",
                          "totalPositionIM": num(held), "totalOrderIM": "0", "unrealisedPnl": "0",
                          "cumRealisedPnl": "0", "accruedInterest": "0", "bonus": "0", "collateralSwitch": True,
                          "marginCollateral": True, "totalPositionMM": "0", "spotHedgingQty": "0"})
        return json_response(envelope({"list": [{"accountType": "UNIFIED", "coin": coins,
                                                 "totalEquity": "", "totalWalletBalance": "",
                                                 "totalAvailableBalance": num(account.available())}]}))

    # -- crypto loan ----------------------------------------------------------------------------
    def _loans(self):
        if self.ctx.loans is None:
            raise BybitError(10001, "crypto loan is not enabled on this emulator")
        return self.ctx.loans

    def _loan_call(self, action):
        """Loan errors carry crypto-loan codes (148xxx) where Bybit has them."""
        try:
            return action()
        except Reject as rej:
            if rej.reason == RejectReason.INSUFFICIENT_BALANCE:
                raise BybitError(110007 if "USDT" in rej.message else 148012, rej.message) from None
            if rej.reason == RejectReason.NOT_FOUND:
                raise BybitError(148001, rej.message) from None
            if "LTV" in rej.message:
                raise BybitError(148009, rej.message) from None
            raise BybitError(148002, rej.message) from None

    async def loan_repay(self, request: web.Request) -> web.Response:
        params = request[PARAMS]
        if params.get("loanCurrency") != "USDT":
            raise BybitError(148001, "loanCurrency not supported")
        amount = dec(params, "amount")
        record = self._loan_call(lambda: self._loans().repay(request[ACCOUNT], amount))
        return json_response(envelope({"repayId": record["repayId"]}))

    async def loan_ongoing(self, request: web.Request) -> web.Response:
        loans, account = self._loans(), request[ACCOUNT]
        loan = loans.loans.get(account.name)
        rows = []
        if loan is not None and loan.status == "active":
            rows.append({"loanCurrency": "USDT", "totalDebt": num(loan.debt), "unpaidAmount": num(loan.principal),
                         "unpaidInterest": num(loan.interest), "hourlyInterestRate": num(loan.hourly_rate)})
        return json_response(envelope({"list": rows}))

    async def loan_repayments(self, request: web.Request) -> web.Response:
        loans, account = self._loans(), request[ACCOUNT]
        loan = loans.loans.get(account.name)
        rows = [{"loanCurrency": r["loanCurrency"], "repayAmount": num(r["repayAmount"]), "repayId": r["repayId"],
                 "repayStatus": 1, "repayTime": r["repayTime"], "repayType": 1} for r in (loan.repayments if loan else [])]
        if request[PARAMS].get("repayId"):
            rows = [r for r in rows if r["repayId"] == request[PARAMS]["repayId"]]
        return json_response(envelope({"list": list(reversed(rows)), "nextPageCursor": ""}))

    async def loan_adjust(self, request: web.Request) -> web.Response:
        params = request[PARAMS]
        if params.get("currency") != "BTC":
            raise BybitError(148001, "currency not supported as collateral here")
        amount, direction = dec(params, "amount"), str(params.get("direction"))
        record = self._loan_call(lambda: self._loans().adjust(request[ACCOUNT], amount, direction))
        return json_response(envelope({"adjustId": record["adjustId"]}))

    async def loan_adjustments(self, request: web.Request) -> web.Response:
        loans, account = self._loans(), request[ACCOUNT]
        loan = loans.loans.get(account.name)
        rows = [{"adjustId": r["adjustId"], "adjustTime": r["adjustTime"], "afterLTV": r["afterLTV"],
                 "preLTV": r["preLTV"], "amount": num(r["amount"]), "collateralCurrency": r["collateralCurrency"],
                 "direction": int(r["direction"]), "status": 1} for r in (loan.adjustments if loan else [])]
        if request[PARAMS].get("adjustId"):
            rows = [r for r in rows if str(r["adjustId"]) == str(request[PARAMS]["adjustId"])]
        return json_response(envelope({"list": list(reversed(rows)), "nextPageCursor": ""}))

    async def loan_position(self, request: web.Request) -> web.Response:
        loans, account = self._loans(), request[ACCOUNT]
        loan = loans.loans.get(account.name)
        price = self.ctx.market.quote(loans.symbol).risk_price
        if loan is None or loan.status != "active":
            return json_response(envelope({"borrowList": [], "collateralList": [], "supplyList": [], "ltv": "0",
                                           "totalCollateral": "0", "totalDebt": "0", "totalSupply": "0"}))
        collateral_usd = num(loan.collateral * price, 8)
        return json_response(envelope({
            "borrowList": [{"fixedTotalDebt": "0", "fixedTotalDebtUSD": "0", "loanCurrency": "USDT",
                            "flexibleHourlyInterestRate": num(loan.hourly_rate), "flexibleTotalDebt": num(loan.debt),
                            "flexibleTotalDebtUSD": num(loan.debt)}],
            "collateralList": [{"amount": num(loan.collateral), "amountUSD": collateral_usd, "currency": "BTC"}],
            "supplyList": [], "totalCollateral": collateral_usd, "totalDebt": num(loan.debt), "totalSupply": "0",
            "ltv": num(loans.ltv(loan), 8)}))

    # -- websockets -----------------------------------------------------------------------------
    def drop_websockets(self, count: int | None = None) -> int:
        victims = list(self.sockets)[: count or None]
        for ws in victims:
            asyncio.ensure_future(ws.close(code=1006, message=b"dropped by fault injection"))
        return len(victims)

    async def _serve_ws(self, request: web.Request, on_message, *, public: bool = False) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        drops = self.ctx.faults.take_ws_drops("bybit")
        self.sockets.add(ws)
        self.connections_opened += 1
        queue: asyncio.Queue = asyncio.Queue()
        conn_id = f"sim-{next(self._conn_ids)}"

        async def sender() -> None:
            while True:
                message = await queue.get()
                if ws.closed:
                    return
                await ws.send_str(message)

        async def ticker_pusher() -> None:
            """Bybit keeps pushing tickers while the price stands still: so does this, per connection."""
            while True:
                await asyncio.sleep(self.ticker_interval_s)
                topics = self._public.get(ws, (set(), queue))[0]
                for symbol in sorted(topics):
                    self._push_ticker(queue, symbol)

        tasks = [asyncio.create_task(sender())]
        if public:
            tasks.append(asyncio.create_task(ticker_pusher()))
        try:
            if drops:
                await ws.close(code=1006, message=b"dropped by fault injection")
                return ws
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    continue
                op, req_id = data.get("op"), data.get("req_id")
                if op == "ping":
                    queue.put_nowait(json.dumps({"success": True, "ret_msg": "pong", "conn_id": conn_id,
                                                 "req_id": req_id, "op": "ping"}))
                else:
                    reply = on_message(ws, queue, data)
                    if reply is not None:
                        reply.update(conn_id=conn_id, req_id=req_id, op=op)
                        queue.put_nowait(json.dumps(reply))
        finally:
            self.sockets.discard(ws)
            self._public.pop(ws, None)
            self._private.pop(ws, None)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return ws

    async def ws_public(self, request: web.Request) -> web.WebSocketResponse:
        def on_message(ws, queue, data):
            if data.get("op") != "subscribe":
                return {"success": False, "ret_msg": f"unsupported op {data.get('op')}"}
            topics = self._public.setdefault(ws, (set(), queue))[0]
            for arg in data.get("args", []):
                symbol = arg.removeprefix("tickers.")
                if not arg.startswith("tickers.") or symbol not in self.ctx.engine.instruments:
                    return {"success": False, "ret_msg": f"error:handler not found,topic:{arg}"}
                topics.add(symbol)
            queue.put_nowait(json.dumps({"success": True, "ret_msg": "", "op": "subscribe",
                                         "conn_id": "", "req_id": data.get("req_id")}))
            for symbol in topics:
                self._push_ticker(queue, symbol)
            return None

        return await self._serve_ws(request, on_message, public=True)

    async def ws_private(self, request: web.Request) -> web.WebSocketResponse:
        state: dict[str, Account] = {}

        def on_message(ws, queue, data):
            op = data.get("op")
            if op == "auth":
                args = data.get("args") or []
                if len(args) != 3:
                    return {"success": False, "ret_msg": "Params Error"}
                key, expires, signature = str(args[0]), args[1], str(args[2])
                account = self.ctx.engine.accounts.get(key)
                if account is None:
                    return {"success": False, "ret_msg": "Request not authorized"}
                if int(expires) <= wall_ms():
                    return {"success": False, "ret_msg": "Params Error: expires is in the past"}
                if not same(hmac_hex(account.secret, f"GET/realtime{expires}"), signature):
                    return {"success": False, "ret_msg": "Invalid sign"}
                state["account"] = account
                return {"success": True, "ret_msg": ""}
            if op == "subscribe":
                if "account" not in state:
                    return {"success": False, "ret_msg": "Request not authorized"}
                entry = self._private.setdefault(ws, (state["account"], set(), queue))
                for topic in data.get("args", []):
                    if topic not in ("order", "execution", "position", "wallet"):
                        return {"success": False, "ret_msg": f"error:handler not found,topic:{topic}"}
                    entry[1].add(topic)
                return {"success": True, "ret_msg": ""}
            return {"success": False, "ret_msg": f"unsupported op {op}"}

        return await self._serve_ws(request, on_message)

    def _ticker_message(self, symbol: str) -> str:
        return json.dumps({"topic": f"tickers.{symbol}", "type": "snapshot", "data": self.ticker_row(symbol),
                           "cs": wall_ms(), "ts": wall_ms()})

    def _push_ticker(self, queue: asyncio.Queue, symbol: str) -> None:
        if not self.ctx.faults.silenced("bybit"):
            queue.put_nowait(self._ticker_message(symbol))

    def _on_price(self, symbol: str, _quote) -> None:
        if symbol not in self.ctx.engine.instruments:
            return
        message = None
        silenced = self.ctx.faults.silenced("bybit")
        for topics, queue in self._public.values():
            if symbol in topics and not silenced:
                message = message or self._ticker_message(symbol)
                queue.put_nowait(message)
        for account, topics, queue in self._private.values():
            pos = account.positions.get(symbol)
            if "position" in topics and pos is not None and pos.size != 0:
                self._push(queue, "position", [self._ws_position(pos)])

    def _ws_position(self, pos: Position) -> dict[str, Any]:
        inst = self.ctx.engine.instrument(pos.symbol)
        return render_position(pos, self.ctx.market.quote(pos.symbol).mark, inst.maintenance_margin_rate, ws=True)

    @staticmethod
    def _push(queue: asyncio.Queue, topic: str, data: list[dict[str, Any]]) -> None:
        queue.put_nowait(json.dumps({"id": f"{topic}-{wall_ms()}", "topic": topic, "creationTime": wall_ms(),
                                     "data": data}))

    def _on_engine(self, topic: str, account: Account, payload: Any) -> None:
        for owner, topics, queue in self._private.values():
            if owner is not account or topic not in topics:
                continue
            if topic == "order":
                self._push(queue, "order", [dict(render_order(payload), category=CATEGORY)])
            elif topic == "execution":
                self._push(queue, "execution", [dict(render_execution(payload, account.by_id.get(payload.order_id)),
                                                     category=CATEGORY)])
            elif topic == "position":
                self._push(queue, "position", [self._ws_position(payload)])
