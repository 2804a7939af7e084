"""Binance USD-M futures over loopback: /fapi market data, orders, trades, positions, income and leverage,
with Binance's signing (HMAC-SHA256 of query string + body, `signature` last, key in X-MBX-APIKEY), its
timestamp rule (timestamp < server + 1000 and server - timestamp <= recvWindow), its error codes and HTTP
statuses (400 for request errors, 401 for a bad key, 429 + Retry-After for rate limits).
"""

from __future__ import annotations

import asyncio
import re
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from sim.common import ACCOUNT, PARAMS, VenueContext, hmac_hex, hold, json_response, num, same, seven_day_window
from sim.engine import Account, Order, Position, Reject, RejectReason, Status
from sim.market import wall_ms

RECV_WINDOW_DEFAULT = 5000
CLIENT_ID_RE = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")

REJECT_CODES = {
    RejectReason.DUPLICATE_CLIENT_ID: (-4116, "ClientOrderId is duplicated."),
    RejectReason.POST_ONLY_WOULD_CROSS: (-5022, "Due to the order could not be executed as maker, the Post Only order "
                                                "will be rejected. The order will not be recorded in the order history"),
    RejectReason.INSUFFICIENT_BALANCE: (-2019, "Margin is insufficient."),
    RejectReason.REDUCE_ONLY: (-2022, "ReduceOnly Order is rejected."),
    RejectReason.BAD_QTY: (-1111, "Precision is over the maximum defined for this asset."),
    RejectReason.BAD_PRICE: (-1111, "Precision is over the maximum defined for this asset."),
    RejectReason.UNKNOWN_SYMBOL: (-1121, "Invalid symbol."),
    RejectReason.INJECTED: (-1013, "Filter failure."),
}
ORDER_STATUS = {Status.NEW: "NEW", Status.PARTIALLY_FILLED: "PARTIALLY_FILLED", Status.FILLED: "FILLED",
                Status.CANCELLED: "CANCELED", Status.EXPIRED: "EXPIRED", Status.REJECTED: "REJECTED"}


class BinanceError(Exception):
    def __init__(self, code: int, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def too_long() -> BinanceError:
    return BinanceError(-4166, "Search window is restricted to recent 7 days only.")


def dec(params: dict[str, str], name: str, *, required: bool = True) -> Decimal | None:
    value = params.get(name)
    if value in (None, ""):
        if required:
            raise BinanceError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
        return None
    try:
        return Decimal(value)
    except InvalidOperation:
        raise BinanceError(-1100, f"Illegal characters found in parameter '{name}'.") from None


def render_order(order: Order) -> dict[str, Any]:
    return {
        "orderId": int(order.order_id), "symbol": order.symbol, "status": ORDER_STATUS[order.status],
        "clientOrderId": order.client_id, "price": num(order.price) if order.price is not None else "0",
        "avgPrice": num(order.avg_price) if order.filled else "0", "origQty": num(order.qty),
        "executedQty": num(order.filled), "cumQty": num(order.filled), "cumQuote": num(order.cum_value),
        "timeInForce": "GTX" if order.tif == "PostOnly" else order.tif,
        "type": "LIMIT" if order.type == "limit" else "MARKET", "reduceOnly": order.reduce_only,
        "closePosition": False, "side": order.side.upper(), "positionSide": "BOTH", "stopPrice": "0",
        "workingType": "CONTRACT_PRICE", "priceProtect": False, "origType": "LIMIT" if order.type == "limit" else "MARKET",
        "priceMatch": "NONE", "selfTradePreventionMode": "EXPIRE_MAKER", "goodTillDate": 0,
        "time": order.created_ms, "updateTime": order.updated_ms,
    }


class BinanceApp:
    def __init__(self, ctx: VenueContext) -> None:
        self.ctx = ctx

    def build(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        r = app.router
        r.add_get("/fapi/v1/ping", self.ping)
        r.add_get("/fapi/v1/time", self.time)
        r.add_get("/fapi/v1/exchangeInfo", self.exchange_info)
        r.add_get("/fapi/v1/ticker/24hr", self.ticker_24hr)
        r.add_get("/fapi/v1/ticker/bookTicker", self.book_ticker)
        r.add_get("/fapi/v1/premiumIndex", self.premium_index)
        r.add_post("/fapi/v1/order", self.order_new)
        r.add_get("/fapi/v1/order", self.order_query)
        r.add_delete("/fapi/v1/order", self.order_cancel)
        r.add_get("/fapi/v1/openOrders", self.open_orders)
        r.add_get("/fapi/v1/allOrders", self.all_orders)
        r.add_get("/fapi/v1/userTrades", self.user_trades)
        r.add_get("/fapi/v1/leverageBracket", self.leverage_bracket)
        r.add_get("/fapi/v2/positionRisk", self.position_risk)
        r.add_get("/fapi/v3/positionRisk", self.position_risk)
        r.add_get("/fapi/v1/income", self.income)
        r.add_post("/fapi/v1/leverage", self.leverage)
        r.add_get("/fapi/v2/balance", self.balance)
        r.add_get("/fapi/v3/balance", self.balance)
        r.add_get("/fapi/v2/account", self.account_info)
        r.add_get("/fapi/v3/account", self.account_info)
        return app

    # -- plumbing -------------------------------------------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler):
        path = request.path
        public = path in ("/fapi/v1/ping", "/fapi/v1/time", "/fapi/v1/exchangeInfo", "/fapi/v1/ticker/24hr",
                          "/fapi/v1/ticker/bookTicker", "/fapi/v1/premiumIndex")
        order_entry = path == "/fapi/v1/order" and request.method == "POST"
        body = await request.text() if request.method in ("POST", "PUT") else ""
        entry: dict[str, Any] = {"venue": "binanceusdm", "method": request.method, "path": path, "ts_ms": wall_ms(),
                                 "query": request.rel_url.raw_query_string}
        self.ctx.calls.add(entry)  # logged on arrival; the outcome is filled in below
        fault = self.ctx.faults.take("binanceusdm", path, method=request.method, order_entry=order_entry, private=not public)
        try:
            if fault and fault.kind == "latency":
                await asyncio.sleep(float(fault.params.get("ms", 500)) / 1000)
            if fault and fault.kind == "http500":
                entry["status"] = 500
                return web.Response(status=500, text="Internal Server Error")
            if fault and fault.kind == "rate_limit":
                raise BinanceError(-1003, "Too many requests; current limit is 2400 requests per minute. Please use "
                                          "the websocket for live updates to avoid polling the API.", status=429)
            params = dict(parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True))
            params.update(parse_qsl(body, keep_blank_values=True))
            account = None if public else self._authenticate(request, body, params)
            entry["account"] = account.name if account else None
            if fault and fault.kind == "reject":
                raise BinanceError(int(fault.params.get("code", -1013)), fault.params.get("message", "Filter failure."))
            request[ACCOUNT], request[PARAMS] = account, params
            response = await handler(request)
            if fault and fault.kind == "timeout_after_accept":
                entry["held"] = True
                await hold(self.ctx, fault.params)
            entry["status"] = response.status
            return response
        except BinanceError as err:
            entry.update(status=err.status, code=err.code, msg=err.message)
            headers = {"Retry-After": str(int(fault.params.get("retry_after_s", 1)))} if err.status == 429 else None
            return json_response({"code": err.code, "msg": err.message}, status=err.status, headers=headers)
        except Reject as rej:
            code, message = REJECT_CODES.get(rej.reason, (-1013, "Filter failure."))
            entry.update(status=400, code=code, msg=rej.message)
            return json_response({"code": code, "msg": message}, status=400)

    def _authenticate(self, request: web.Request, body: str, params: dict[str, str]) -> Account:
        key = request.headers.get("X-MBX-APIKEY")
        if not key:
            raise BinanceError(-2014, "API-key format invalid.", status=401)
        account = self.ctx.engine.accounts.get(key)
        if account is None:
            raise BinanceError(-2015, "Invalid API-key, IP, or permissions for action.", status=401)
        query = request.rel_url.raw_query_string
        signed, signature = [], None
        for part in (query, body):
            match = re.search(r"(?:^|&)signature=([0-9a-fA-F]+)$", part)
            if match:
                signature = match.group(1)
                part = part[: match.start()]
            signed.append(part)
        if signature is None:
            raise BinanceError(-1102, "Mandatory parameter 'signature' was not sent, was empty/null, or malformed.")
        try:
            timestamp = int(params.get("timestamp", ""))
            recv_window = int(params.get("recvWindow", RECV_WINDOW_DEFAULT))
        except ValueError:
            raise BinanceError(-1102, "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed.") from None
        if recv_window > 60000:
            raise BinanceError(-1131, "recvWindow must be less than 60000")
        server = wall_ms()
        if not (timestamp < server + 1000 and server - timestamp <= recv_window):
            raise BinanceError(-1021, "Timestamp for this request is outside of the recvWindow.")
        if not same(hmac_hex(account.secret, "".join(signed)), signature.lower()):
            raise BinanceError(-1022, "Signature for this request is not valid.")
        return account

    def _symbol(self, params: dict[str, str], *, required: bool = True) -> str | None:
        symbol = params.get("symbol")
        if not symbol:
            if required:
                raise BinanceError(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
            return None
        if symbol not in self.ctx.engine.instruments:
            raise BinanceError(-1121, "Invalid symbol.")
        return symbol

    # -- market ---------------------------------------------------------------------------------
    async def ping(self, request: web.Request) -> web.Response:
        return json_response({})

    async def time(self, request: web.Request) -> web.Response:
        return json_response({"serverTime": wall_ms()})

    async def exchange_info(self, request: web.Request) -> web.Response:
        symbols = []
        for inst in self.ctx.engine.instruments.values():
            price_precision = max(0, -inst.tick.normalize().as_tuple().exponent)
            qty_precision = max(0, -inst.qty_step.normalize().as_tuple().exponent)
            symbols.append({
                "symbol": inst.symbol, "pair": inst.symbol, "contractType": "PERPETUAL", "deliveryDate": 4133404800000,
                "onboardDate": 1569398400000, "status": "TRADING", "maintMarginPercent": "2.5000",
                "requiredMarginPercent": "5.0000", "baseAsset": inst.base, "quoteAsset": inst.quote,
                "marginAsset": inst.quote, "pricePrecision": price_precision, "quantityPrecision": qty_precision,
                "baseAssetPrecision": 8, "quotePrecision": 8, "underlyingType": "COIN", "underlyingSubType": ["PoW"],
                "triggerProtect": "0.0500", "liquidationFee": "0.012500", "marketTakeBound": "0.05",
                "maxMoveOrderLimit": 10000,
                "filters": [
                    {"filterType": "PRICE_FILTER", "minPrice": num(inst.tick), "maxPrice": "4529764",
                     "tickSize": num(inst.tick)},
                    {"filterType": "LOT_SIZE", "stepSize": num(inst.qty_step), "minQty": num(inst.min_qty),
                     "maxQty": num(inst.max_qty)},
                    {"filterType": "MARKET_LOT_SIZE", "stepSize": num(inst.qty_step), "minQty": num(inst.min_qty),
                     "maxQty": num(inst.max_market_qty)},
                    {"filterType": "MAX_NUM_ORDERS", "limit": 200},
                    {"filterType": "MAX_NUM_ALGO_ORDERS", "limit": 10},
                    {"filterType": "MIN_NOTIONAL", "notional": num(inst.min_notional)},
                    {"filterType": "PERCENT_PRICE", "multiplierUp": "1.0500", "multiplierDown": "0.9500",
                     "multiplierDecimal": "4"},
                ],
                "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET",
                               "TRAILING_STOP_MARKET"],
                "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"], "permissionSets": ["GRID", "COPY"],
            })
        return json_response({"timezone": "UTC", "serverTime": wall_ms(), "futuresType": "U_MARGINED",
                              "rateLimits": [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE",
                                              "intervalNum": 1, "limit": 2400},
                                             {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1,
                                              "limit": 1200}],
                              "exchangeFilters": [], "assets": [{"asset": "USDT", "marginAvailable": True,
                                                                 "autoAssetExchange": "-10000"}],
                              "symbols": symbols})

    def _each(self, params: dict[str, str], render) -> web.Response:
        symbol = self._symbol(params, required=False)
        if symbol:
            return json_response(render(symbol))
        return json_response([render(s) for s in self.ctx.engine.instruments])

    async def ticker_24hr(self, request: web.Request) -> web.Response:
        def render(symbol: str) -> dict[str, Any]:
            last = self.ctx.market.quote(symbol).last
            now = wall_ms()
            return {"symbol": symbol, "priceChange": "0", "priceChangePercent": "0", "weightedAvgPrice": num(last),
                    "lastPrice": num(last), "lastQty": "0.001", "openPrice": num(last), "highPrice": num(last),
                    "lowPrice": num(last), "volume": "0", "quoteVolume": "0", "openTime": now - 86_400_000,
                    "closeTime": now, "firstId": 0, "lastId": 0, "count": 0}
        return self._each(request[PARAMS], render)

    async def book_ticker(self, request: web.Request) -> web.Response:
        def render(symbol: str) -> dict[str, Any]:
            bid, ask = self.ctx.engine.touch(symbol)
            size = num(self.ctx.engine.config.level_qty)
            return {"symbol": symbol, "bidPrice": num(bid), "bidQty": size, "askPrice": num(ask), "askQty": size,
                    "time": wall_ms()}
        return self._each(request[PARAMS], render)

    async def premium_index(self, request: web.Request) -> web.Response:
        def render(symbol: str) -> dict[str, Any]:
            quote = self.ctx.market.quote(symbol)
            now = self.ctx.market.clock.now()
            next_funding = ((int(now.timestamp() // 3600) // 8) + 1) * 8 * 3600 * 1000
            return {"symbol": symbol, "markPrice": num(quote.mark), "indexPrice": num(quote.index),
                    "estimatedSettlePrice": num(quote.index), "lastFundingRate": num(quote.funding_rate),
                    "interestRate": "0.00010000", "nextFundingTime": next_funding, "time": wall_ms()}
        return self._each(request[PARAMS], render)

    # -- orders ---------------------------------------------------------------------------------
    async def order_new(self, request: web.Request) -> web.Response:
        params, account = request[PARAMS], request[ACCOUNT]
        symbol = self._symbol(params)
        side, kind = params.get("side", ""), params.get("type", "")
        if side not in ("BUY", "SELL"):
            raise BinanceError(-1117, "Invalid side.")
        if kind not in ("LIMIT", "MARKET"):
            raise BinanceError(-1116, "Invalid orderType.")
        client_id = params.get("newClientOrderId", "")
        if not CLIENT_ID_RE.match(client_id):
            raise BinanceError(-1100, "Illegal characters found in parameter 'newClientOrderId'; legal range is "
                                      "'^[\\.A-Z\\:/a-z0-9_-]{1,36}$'.")
        if params.get("positionSide", "BOTH") != "BOTH":
            raise BinanceError(-4061, "Order's position side does not match user's setting.")
        tif = params.get("timeInForce", "GTC" if kind == "LIMIT" else "")
        if kind == "LIMIT" and tif not in ("GTC", "IOC", "FOK", "GTX"):
            raise BinanceError(-1115, "Invalid timeInForce.")
        order = self.ctx.engine.place(
            account, symbol=symbol, side=side.lower(), type=kind.lower(), qty=dec(params, "quantity"),
            price=dec(params, "price", required=kind == "LIMIT"), tif="PostOnly" if tif == "GTX" else (tif or "IOC"),
            reduce_only=params.get("reduceOnly", "false").lower() == "true", client_id=client_id)
        return json_response(render_order(order))

    def _find(self, request: web.Request) -> Order | None:
        params = request[PARAMS]
        self._symbol(params)
        if not params.get("orderId") and not params.get("origClientOrderId"):
            raise BinanceError(-1102, "Either orderId or origClientOrderId must be sent.")
        return self.ctx.engine.find(request[ACCOUNT], order_id=params.get("orderId"),
                                    client_id=params.get("origClientOrderId"))

    async def order_query(self, request: web.Request) -> web.Response:
        order = self._find(request)
        if order is None:
            raise BinanceError(-2013, "Order does not exist.")
        return json_response(render_order(order))

    async def order_cancel(self, request: web.Request) -> web.Response:
        order = self._find(request)
        if order is None or not order.status.open:
            raise BinanceError(-2011, "Unknown order sent.")
        self.ctx.engine.cancel(request[ACCOUNT], order_id=order.order_id)
        return json_response(render_order(order))

    async def open_orders(self, request: web.Request) -> web.Response:
        symbol = self._symbol(request[PARAMS], required=False)
        return json_response([render_order(o) for o in request[ACCOUNT].open_orders(symbol)])

    async def all_orders(self, request: web.Request) -> web.Response:
        params = request[PARAMS]
        symbol = self._symbol(params)
        orders = [o for o in request[ACCOUNT].orders if o.symbol == symbol]
        if params.get("orderId"):
            orders = [o for o in orders if int(o.order_id) >= int(params["orderId"])]
        else:
            begin, end = seven_day_window(params, too_long(), wall_ms())
            orders = [o for o in orders if begin <= o.created_ms <= end]
        return json_response([render_order(o) for o in orders][: int(params.get("limit") or 500)])

    async def user_trades(self, request: web.Request) -> web.Response:
        params, account = request[PARAMS], request[ACCOUNT]
        symbol = self._symbol(params)
        fills = [f for f in account.fills if f.symbol == symbol and f.exec_type != "Funding"]
        if params.get("orderId"):
            fills = [f for f in fills if f.order_id == params["orderId"]]
        elif params.get("fromId"):
            fills = [f for f in fills if f.seq >= int(params["fromId"])]
        else:
            begin, end = seven_day_window(params, too_long(), wall_ms())
            fills = [f for f in fills if begin <= f.ts_ms <= end]
        fills = fills[: min(int(params.get("limit") or 500), 1000)]
        return json_response([{
            "buyer": f.side == "buy", "commission": num(f.fee), "commissionAsset": "USDT", "id": f.seq,
            "maker": f.is_maker, "orderId": int(f.order_id), "price": num(f.price), "qty": num(f.qty),
            "quoteQty": num(f.value), "realizedPnl": num(f.realised_pnl), "side": f.side.upper(),
            "positionSide": "BOTH", "symbol": f.symbol, "time": f.ts_ms} for f in fills])

    # -- positions, income, account -------------------------------------------------------------
    async def leverage_bracket(self, request: web.Request) -> web.Response:
        def render(symbol: str) -> dict[str, Any]:
            inst = self.ctx.engine.instrument(symbol)
            return {"symbol": symbol, "notionalCoef": 1.0, "brackets": [
                {"bracket": 1, "initialLeverage": int(inst.max_leverage), "notionalCap": 50000, "notionalFloor": 0,
                 "maintMarginRatio": float(inst.maintenance_margin_rate), "cum": 0.0},
                {"bracket": 2, "initialLeverage": 100, "notionalCap": 600000, "notionalFloor": 50000,
                 "maintMarginRatio": 0.005, "cum": 50.0}]}
        symbol = self._symbol(request[PARAMS], required=False)
        return json_response([render(symbol)] if symbol else [render(s) for s in self.ctx.engine.instruments])

    def _position_row(self, account: Account, pos: Position) -> dict[str, Any]:
        inst = self.ctx.engine.instrument(pos.symbol)
        mark = self.ctx.market.quote(pos.symbol).mark
        liq = pos.liquidation_price(inst.maintenance_margin_rate)
        return {"symbol": pos.symbol, "positionSide": "BOTH", "positionAmt": num(pos.size),
                "entryPrice": num(pos.entry), "breakEvenPrice": num(pos.entry), "markPrice": num(mark),
                "unRealizedProfit": num(pos.unrealised(mark)), "liquidationPrice": num(liq, 2) if liq else "0",
                "isolatedMargin": num(pos.margin), "notional": num(pos.size * mark), "marginAsset": "USDT",
                "isolatedWallet": num(pos.margin), "initialMargin": num(pos.margin),
                "maintMargin": num(abs(pos.size) * mark * inst.maintenance_margin_rate),
                "positionInitialMargin": num(pos.margin), "openOrderInitialMargin": "0", "adl": 0,
                "bidNotional": "0", "askNotional": "0", "updateTime": pos.updated_ms,
                "leverage": num(account.lev(pos.symbol)), "marginType": "isolated", "isAutoAddMargin": "false",
                "maxNotionalValue": "50000"}

    async def position_risk(self, request: web.Request) -> web.Response:
        account: Account = request[ACCOUNT]
        symbol = self._symbol(request[PARAMS], required=False)
        symbols = [symbol] if symbol else list(self.ctx.engine.instruments)
        rows = []
        for s in symbols:
            pos = account.positions.get(s) or Position(symbol=s, leverage=account.lev(s))
            if symbol or pos.size != 0 or request.path.startswith("/fapi/v2"):
                rows.append(self._position_row(account, pos))
        return json_response(rows)

    async def income(self, request: web.Request) -> web.Response:
        params, account = request[PARAMS], request[ACCOUNT]
        symbol = self._symbol(params, required=False)
        rows = [i for i in account.incomes if (not symbol or i.symbol == symbol)
                and (not params.get("incomeType") or i.type == params["incomeType"])]
        begin, end = seven_day_window(params, too_long(), wall_ms())
        rows = [i for i in rows if begin <= i.ts_ms <= end]
        rows = rows[: min(int(params.get("limit") or 100), 1000)]
        return json_response([{"symbol": i.symbol, "incomeType": i.type, "income": num(i.amount), "asset": i.asset,
                               "info": i.info, "time": i.ts_ms, "tranId": 9_000_000 + i.id, "tradeId": i.trade_id}
                              for i in rows])

    async def leverage(self, request: web.Request) -> web.Response:
        params = request[PARAMS]
        symbol = self._symbol(params)
        lev = dec(params, "leverage")
        try:
            self.ctx.engine.set_leverage(request[ACCOUNT], symbol, lev)
        except Reject:
            raise BinanceError(-4028, f"Leverage {params.get('leverage')} is not valid") from None
        return json_response({"leverage": int(lev), "maxNotionalValue": "50000", "symbol": symbol})

    def _assets(self, account: Account) -> list[dict[str, Any]]:
        rows = []
        for asset, amount in sorted(account.balances.items()):
            available = account.available() if asset == "USDT" else amount
            rows.append({"accountAlias": "SgsR", "asset": asset, "balance": num(amount), "walletBalance": num(amount),
                         "crossWalletBalance": num(amount), "crossUnPnl": "0", "unrealizedProfit": "0",
                         "marginBalance": num(amount), "availableBalance": num(available),
                         "maxWithdrawAmount": num(available), "marginAvailable": True, "maintMargin": "0",
                         "initialMargin": num(amount - available), "positionInitialMargin": num(amount - available),
                         "openOrderInitialMargin": "0", "updateTime": wall_ms()})
        return rows

    async def balance(self, request: web.Request) -> web.Response:
        return json_response(self._assets(request[ACCOUNT]))

    async def account_info(self, request: web.Request) -> web.Response:
        account: Account = request[ACCOUNT]
        usdt = account.balances.get("USDT", Decimal(0))
        return json_response({"totalWalletBalance": num(usdt), "totalMarginBalance": num(usdt),
                              "availableBalance": num(account.available()), "maxWithdrawAmount": num(account.available()),
                              "totalUnrealizedProfit": "0", "assets": self._assets(account),
                              "positions": [self._position_row(account, p) for p in account.positions.values()
                                            if p.size != 0]})
