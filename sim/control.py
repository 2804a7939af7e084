"""The simulator's control API on loopback: JSON in, JSON out, for tests, scripts and people.

    GET  /control/state                 prices, market clock, replay, venues
    POST /control/price                 {"symbol":"BTCUSDT","price":"52000"[,"index","mark","funding_rate"]}
    POST /control/replay                {"file":"...","speed":60[,"start":"2020-03-12T23:00:00Z","symbol"]}
    POST /control/replay/step           {"points":4}            one bar is four points
    POST /control/replay/seek           {"ts":"2020-03-13T02:00:00Z"}
    POST /control/replay/speed          {"speed":0}             0 pauses
    DELETE /control/replay              back to a static price and the wall clock
    POST /control/fault                 {"venue":"bybit","kind":"http500|rate_limit|timeout_after_accept|reject|
                                         ws_drop|latency","count":3[,"path":"order/create","hold_s":3,"ms":200]}
                                        {"venue":"bybit","kind":"ws_silence","seconds":5}   public websocket pushes
                                         stop for that long, sockets stay open (a stale feed)
                                        {"venue":"slack|telegram|smtp","kind":"rate_limit","count":1,"retry_after":2}
                                        {"venue":"smtp","kind":"http500|down","count":1}   {"kind":"down","seconds":5}
                                         chat faults refuse sends only (chat.postMessage, sendMessage, SMTP MAIL)
                                         unless a "path" names the call ("getUpdates", "DATA")
    GET|DELETE /control/faults          pending faults / clear them
    GET  /control/orders?venue=bybit[&account=]   every order ever received
    GET  /control/spot-orders[?account=]          every Bybit spot order (the treasury's BTC buys)
    GET  /control/fills?venue=&account=           every execution (trades, funding, liquidations)
    GET  /control/positions?venue=                open positions with liquidation prices
    GET  /control/loans                 the crypto-loan book
    POST /control/loans                 {"account":"desk","collateral_btc":"1","debt_usdt":"20000"}
    POST /control/accounts              {"venue":"bybit","api_key":"k","secret":"s","balances":{"USDT":"100000"}[,"name"]}
    GET  /control/accounts?venue=       names and balances (no secrets)
    GET  /control/calls?venue=&path=    the call log
    POST /control/advance               {"seconds":3600}        move the market clock (interest, funding)
    POST /control/funding               {"symbol":"BTCUSDT"[,"rate":"0.0001"]}   settle funding now
    POST /control/config                {"venue":"bybit","maker_fill_qty":"0.01",...}
    GET  /control/liquidations          forced liquidations of hedges and loans
    GET|DELETE /control/chat/messages[?service=slack|telegram|email]   what the chat emulators were sent
    POST /control/chat/telegram/incoming {"chat_id":111111,"text":"/pause L-1"[,"username":"owner"]}
                                        a person writes to the bot: an update for getUpdates
    GET  /control/chat/smtp/cert        the SMTP emulator's TLS certificate (PEM), for a client to trust
    GET  /chat                          a page of the chat messages, newest first, for a person
"""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from aiohttp import web

from sim.chat import page
from sim.common import BODY, json_response, num
from sim.engine import Account, Order
from sim.faults import CHAT_VENUES, KINDS
from sim.replay import parse_ts

if TYPE_CHECKING:
    from sim.server import Simulator


class ControlError(Exception):
    pass


def _dec(body: dict[str, Any], name: str, *, required: bool = True) -> Decimal | None:
    value = body.get(name)
    if value is None:
        if required:
            raise ControlError(f"{name} is required")
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise ControlError(f"{name} must be a number, got {value!r}") from None


def _ts(text: str) -> datetime:
    try:
        return parse_ts(text)
    except ValueError:
        raise ControlError(f"time {text!r} must look like 2020-03-12T23:00:00Z") from None


def order_view(venue: str, order: Order) -> dict[str, Any]:
    return {"venue": venue, "account": order.account, "order_id": order.order_id,
            "client_order_id": order.client_id, "symbol": order.symbol, "side": order.side, "type": order.type,
            "time_in_force": order.tif, "price": num(order.price) if order.price is not None else None,
            "qty": num(order.qty), "filled": num(order.filled),
            "avg_price": num(order.avg_price) if order.filled else None, "status": order.status.value,
            "reduce_only": order.reduce_only, "reject_reason": order.reject_reason, "created_ms": order.created_ms,
            "updated_ms": order.updated_ms}


class ControlApp:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    def build(self) -> web.Application:
        app = web.Application(middlewares=[self._errors])
        r = app.router
        r.add_get("/control/state", self.state)
        r.add_post("/control/price", self.price)
        r.add_post("/control/replay", self.replay)
        r.add_delete("/control/replay", self.replay_stop)
        r.add_post("/control/replay/step", self.replay_step)
        r.add_post("/control/replay/seek", self.replay_seek)
        r.add_post("/control/replay/speed", self.replay_speed)
        r.add_post("/control/fault", self.fault)
        r.add_get("/control/faults", self.faults)
        r.add_delete("/control/faults", self.faults_clear)
        r.add_get("/control/orders", self.orders)
        r.add_get("/control/spot-orders", self.spot_orders)
        r.add_get("/control/fills", self.fills)
        r.add_get("/control/positions", self.positions)
        r.add_get("/control/loans", self.loans)
        r.add_post("/control/loans", self.loan_open)
        r.add_post("/control/accounts", self.account_create)
        r.add_get("/control/accounts", self.accounts)
        r.add_get("/control/calls", self.calls)
        r.add_post("/control/advance", self.advance)
        r.add_post("/control/funding", self.funding)
        r.add_post("/control/config", self.config)
        r.add_get("/control/liquidations", self.liquidations)
        r.add_get("/control/chat/messages", self.chat_messages)
        r.add_delete("/control/chat/messages", self.chat_clear)
        r.add_post("/control/chat/telegram/incoming", self.telegram_incoming)
        r.add_get("/control/chat/smtp/cert", self.smtp_cert)
        r.add_get("/chat", self.chat_page)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler):
        try:
            if request.method in ("POST", "PUT"):
                text = await request.text()
                try:
                    body = json.loads(text) if text else {}
                except ValueError:
                    raise ControlError("body must be JSON") from None
                if not isinstance(body, dict):
                    raise ControlError("body must be a JSON object")
                request[BODY] = body
            return await handler(request)
        except (ControlError, ValueError, KeyError) as exc:
            message = str(exc) if not isinstance(exc, KeyError) else f"unknown {exc.args[0]}"
            return json_response({"error": message}, status=400)

    def _engines(self, request: web.Request):
        venue = request.query.get("venue")
        if venue and venue not in self.sim.engines:
            raise ControlError(f"unknown venue {venue!r}; one of {', '.join(self.sim.engines)}")
        return {v: e for v, e in self.sim.engines.items() if not venue or v == venue}

    def _accounts(self, request: web.Request):
        name = request.query.get("account")
        for venue, engine in self._engines(request).items():
            for account in engine.accounts.values():
                if not name or account.name == name:
                    yield venue, engine, account

    # -- market ---------------------------------------------------------------------------------
    async def state(self, request: web.Request) -> web.Response:
        prices = {}
        for symbol, quote in self.sim.market.quotes.items():
            bid, ask = self.sim.engines["bybit"].touch(symbol)
            prices[symbol] = {"last": num(quote.last), "index": num(quote.index), "mark": num(quote.mark),
                              "bid": num(bid), "ask": num(ask), "funding_rate": num(quote.funding_rate),
                              "source": self.sim.price_sources.get(symbol, "set by control API")}
        return json_response({
            "market_time": self.sim.market_time().isoformat(), "prices": prices,
            "replay": self.sim.replay.status() if self.sim.replay else None, "urls": self.sim.urls,
            "seed": self.sim.seed, "faults": [f.public() for f in self.sim.faults.active()],
            "config": {v: e.config.public() for v, e in self.sim.engines.items()},
            "liquidation_ltv": num(self.sim.loans.liquidation_ltv),
            "accounts": {v: len(e.accounts) for v, e in self.sim.engines.items()}})

    async def price(self, request: web.Request) -> web.Response:
        body = request[BODY]
        symbol = str(body.get("symbol", "BTCUSDT"))
        quote = self.sim.market.set_price(symbol, _dec(body, "price"), index=_dec(body, "index", required=False),
                                          mark=_dec(body, "mark", required=False),
                                          funding_rate=_dec(body, "funding_rate", required=False))
        self.sim.price_sources[symbol] = "set by control API"
        return json_response({"symbol": symbol, "last": quote.last, "index": quote.index, "mark": quote.mark})

    async def replay(self, request: web.Request) -> web.Response:
        body = request[BODY]
        if "file" not in body:
            raise ControlError("file is required")
        speed = float(body.get("speed", 60))
        if speed < 0:
            raise ControlError("speed must be >= 0 (0 = step by hand)")
        start = _ts(body["start"]) if body.get("start") else None
        replay = self.sim.load_replay(str(body["file"]), speed=speed, start=start,
                                      symbol=str(body.get("symbol", "BTCUSDT")))
        return json_response(replay.status())

    async def replay_stop(self, request: web.Request) -> web.Response:
        self.sim.stop_replay()
        return json_response({"replay": None})

    async def replay_step(self, request: web.Request) -> web.Response:
        body = request[BODY]
        points = int(body.get("points", 0)) + 4 * int(body.get("bars", 0)) or 1
        taken = self.sim.step_replay(points)
        return json_response({"points": taken, "replay": self.sim.replay.status()})

    async def replay_seek(self, request: web.Request) -> web.Response:
        if self.sim.replay is None:
            raise ControlError("no replay loaded")
        return json_response(self.sim.seek_replay(_ts(str(request[BODY].get("ts", "")))))

    async def replay_speed(self, request: web.Request) -> web.Response:
        if self.sim.replay is None:
            raise ControlError("no replay loaded")
        speed = float(request[BODY].get("speed", 0))
        if speed < 0:
            raise ControlError("speed must be >= 0")
        self.sim.replay.speed = speed
        self.sim.replay.step(0)  # re-anchor the real-time pace
        return json_response(self.sim.replay.status())

    # -- faults ---------------------------------------------------------------------------------
    async def fault(self, request: web.Request) -> web.Response:
        body = dict(request[BODY])
        venue = body.pop("venue", None)
        if venue not in self.sim.engines and venue not in CHAT_VENUES:
            raise ControlError(f"venue must be one of {', '.join([*self.sim.engines, *CHAT_VENUES])}")
        kind = body.pop("kind", None)
        if kind not in KINDS:
            raise ControlError(f"kind must be one of {', '.join(KINDS)}")
        if kind == "ws_silence" and venue != "bybit":
            raise ControlError("ws_silence applies to bybit, the emulator with websockets")
        count = int(body.pop("count", 1))
        path, method = body.pop("path", None), body.pop("method", None)
        fault = self.sim.faults.add(venue, kind, count, path, method, **body)
        dropped = 0
        if kind == "ws_drop" and venue == "bybit":
            self.sim.faults.take_ws_drops(venue)
            dropped = self.sim.bybit.drop_websockets(count)
        return json_response({**fault.public(), "dropped_now": dropped})

    async def faults(self, request: web.Request) -> web.Response:
        return json_response([f.public() for f in self.sim.faults.active()])

    async def faults_clear(self, request: web.Request) -> web.Response:
        self.sim.faults.clear()
        return json_response([])

    # -- books ----------------------------------------------------------------------------------
    async def orders(self, request: web.Request) -> web.Response:
        return json_response([order_view(v, o) for v, _, a in self._accounts(request) for o in a.orders])

    async def spot_orders(self, request: web.Request) -> web.Response:
        """Apart from /control/orders: spot orders fill at once and never enter the derivatives engine."""
        name = request.query.get("account")
        return json_response([
            {"venue": "bybit", "account": account, "order_id": o.order_id, "client_order_id": o.client_id,
             "symbol": o.symbol, "side": o.side, "qty": o.qty, "market_unit": o.market_unit, "price": o.price,
             "exec_qty": o.exec_qty, "exec_value": o.exec_value, "fee": o.fee, "fee_coin": o.fee_coin,
             "created_ms": o.created_ms}
            for account, orders in self.sim.bybit.spot_orders.items() if not name or account == name for o in orders])

    async def fills(self, request: web.Request) -> web.Response:
        return json_response([{"venue": v, "account": a.name, "exec_id": f.exec_id, "order_id": f.order_id,
                               "client_order_id": f.client_id, "symbol": f.symbol, "side": f.side, "qty": f.qty,
                               "price": f.price, "fee": f.fee, "is_maker": f.is_maker, "exec_type": f.exec_type,
                               "realised_pnl": f.realised_pnl, "ts_ms": f.ts_ms}
                              for v, _, a in self._accounts(request) for f in a.fills])

    async def positions(self, request: web.Request) -> web.Response:
        rows = []
        for venue, engine, account in self._accounts(request):
            for pos in account.positions.values():
                if pos.size == 0:
                    continue
                mmr = engine.instrument(pos.symbol).maintenance_margin_rate
                mark = self.sim.market.quote(pos.symbol).mark
                rows.append({"venue": venue, "account": account.name, "symbol": pos.symbol, "size": pos.size,
                             "entry": pos.entry, "margin": pos.margin, "leverage": pos.leverage,
                             "liquidation_price": pos.liquidation_price(mmr), "mark": mark,
                             "unrealised_pnl": pos.unrealised(mark), "realised_pnl": pos.realised})
        return json_response(rows)

    async def loans(self, request: web.Request) -> web.Response:
        return json_response(self.sim.loans.snapshot())

    async def loan_open(self, request: web.Request) -> web.Response:
        body = request[BODY]
        account = self.sim.engines["bybit"].account_by_name(str(body.get("account", "")))
        if account is None:
            raise ControlError(f"no bybit account {body.get('account')!r}: create it with POST /control/accounts")
        self.sim.loans.open(account, collateral_btc=_dec(body, "collateral_btc"), debt_usdt=_dec(body, "debt_usdt"),
                            hourly_rate=_dec(body, "hourly_rate", required=False))
        return json_response([loan for loan in self.sim.loans.snapshot() if loan["account"] == account.name][0])

    async def account_create(self, request: web.Request) -> web.Response:
        body = request[BODY]
        engine = self.sim.engines.get(str(body.get("venue")))
        if engine is None:
            raise ControlError(f"venue must be one of {', '.join(self.sim.engines)}")
        api_key, secret = str(body.get("api_key") or ""), str(body.get("secret") or "")
        if not api_key or not secret:
            raise ControlError("api_key and secret are required")
        balances = {str(k): _dec(body["balances"], k) for k in (body.get("balances") or {})}
        account, created = engine.create_account(str(body.get("name") or api_key), api_key, secret, balances)
        return json_response(self._account_view(engine.venue, account) | {"created": created},
                             status=201 if created else 200)

    @staticmethod
    def _account_view(venue: str, account: Account) -> dict[str, Any]:
        return {"venue": venue, "name": account.name, "balances": account.balances,
                "available_usdt": account.available()}

    async def accounts(self, request: web.Request) -> web.Response:
        return json_response([self._account_view(v, a) for v, _, a in self._accounts(request)])

    async def calls(self, request: web.Request) -> web.Response:
        return json_response(self.sim.calls.query(request.query.get("venue"), request.query.get("path")))

    async def advance(self, request: web.Request) -> web.Response:
        seconds = float(request[BODY].get("seconds", 0))
        if seconds <= 0:
            raise ControlError("seconds must be positive")
        self.sim.advance(seconds)
        return json_response({"market_time": self.sim.market_time().isoformat()})

    async def funding(self, request: web.Request) -> web.Response:
        body = request[BODY]
        return json_response(self.sim.settle_funding(symbol=body.get("symbol"),
                                                     rate=_dec(body, "rate", required=False)))

    async def config(self, request: web.Request) -> web.Response:
        body = dict(request[BODY])
        if "liquidation_ltv" in body:
            self.sim.loans.liquidation_ltv = _dec(body, "liquidation_ltv")
        venue = body.pop("venue", None)
        if venue is not None:
            engine = self.sim.engines.get(venue)
            if engine is None:
                raise ControlError(f"unknown venue {venue!r}")
            for key in ("maker_fee", "taker_fee", "spread_bps", "level_qty", "level_step_bps"):
                if key in body:
                    setattr(engine.config, key, _dec(body, key))
            if "maker_fill_qty" in body:
                engine.config.maker_fill_qty = _dec(body, "maker_fill_qty", required=False)
            if "depth_levels" in body:
                engine.config.depth_levels = int(body["depth_levels"])
        return json_response({"config": {v: e.config.public() for v, e in self.sim.engines.items()},
                              "liquidation_ltv": num(self.sim.loans.liquidation_ltv)})

    async def liquidations(self, request: web.Request) -> web.Response:
        hedges = [liq for e in self.sim.engines.values() for liq in e.liquidations]
        loans = [{"account": loan.account, **loan.liquidation} for loan in self.sim.loans.loans.values()
                 if loan.liquidation]
        return json_response({"hedges": hedges, "loans": loans})

    # -- chat -----------------------------------------------------------------------------------
    async def chat_messages(self, request: web.Request) -> web.Response:
        return json_response({"messages": self.sim.chat.messages(request.query.get("service"))})

    async def chat_clear(self, request: web.Request) -> web.Response:
        self.sim.chat.clear()
        return json_response({"messages": []})

    async def telegram_incoming(self, request: web.Request) -> web.Response:
        body = request[BODY]
        try:
            chat_id = int(body.get("chat_id"))
        except (TypeError, ValueError):
            raise ControlError("chat_id must be an integer") from None
        username = body.get("username")
        update_id = self.sim.chat.telegram.incoming(chat_id, str(body.get("text") or ""),
                                                    str(username) if username else None)
        return json_response({"update_id": update_id})

    async def smtp_cert(self, request: web.Request) -> web.Response:
        pem = self.sim.chat.smtp_cert_pem
        if pem is None:
            raise ControlError("the SMTP emulator is not running")
        return web.Response(text=pem, content_type="text/plain")

    async def chat_page(self, request: web.Request) -> web.Response:
        return web.Response(text=page(self.sim.chat.messages()), content_type="text/html")
