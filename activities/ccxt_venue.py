"""The Venue interface on the real ccxt clients, for Bybit (V5, linear) and Binance USD-M.

In paper mode every URL in the client's table points at the loopback emulator (`loopback_urls`); ccxt's
attribution (Bybit's `Referer: CCXT` header, Binance broker-prefixed client ids) is switched off. Orders
are idempotent by client order id: placing looks the id up first, and a timeout or duplicate answer is
resolved by looking it up again, never by sending a second order.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import ccxt.pro as ccxtpro
from ccxt.base.errors import AuthenticationError, BaseError, NetworkError

from activities.venue import (
    OrderNotFound,
    OrderRejected,
    VenueAuthError,
    VenueClockSkew,
    VenueError,
    VenueRateLimited,
    VenueUnavailable,
)
from models.settings import Credentials
from models.venue import (
    CLIENT_ORDER_ID_RE,
    AccountEvents,
    FundingRate,
    MarketInfo,
    OrderRequest,
    OrderState,
    OrderStatus,
    OrderType,
    RejectReason,
    SpotFill,
    Ticker,
    TimeInForce,
    VenuePosition,
)
from models.venue_events import VenueFill, VenueFunding

RATE_LIMIT_RETRIES = 5
READ_RETRIES = 2
LOOKUP_AFTER_TIMEOUT = 3  # lookups by client id after an order request timed out
WINDOW_MS = 7 * 24 * 3600 * 1000 - 60_000  # both venues answer at most 7 days of fills per request
OVERLAP_MS = 60_000  # re-read the last minute: a late-listed fill is caught, and the ledger drops repeats

# venue code -> (error class, reject reason)
BYBIT_CODES: dict[int, tuple[type[VenueError], RejectReason | None]] = {
    10002: (VenueClockSkew, None), 10003: (VenueAuthError, None), 10004: (VenueAuthError, None),
    10005: (VenueAuthError, None), 10010: (VenueAuthError, None), 33004: (VenueAuthError, None),
    10006: (VenueRateLimited, None), 10018: (VenueRateLimited, None),
    10000: (VenueUnavailable, None), 10016: (VenueUnavailable, None), 10019: (VenueUnavailable, None),
    110001: (OrderNotFound, None),
    110007: (OrderRejected, RejectReason.INSUFFICIENT_BALANCE), 110012: (OrderRejected, RejectReason.INSUFFICIENT_BALANCE),
    110017: (OrderRejected, RejectReason.REDUCE_ONLY), 110072: (OrderRejected, RejectReason.DUPLICATE_CLIENT_ORDER_ID),
    10001: (OrderRejected, RejectReason.INVALID),
    148009: (OrderRejected, RejectReason.INVALID), 148012: (OrderRejected, RejectReason.INSUFFICIENT_BALANCE),
    148001: (OrderNotFound, None), 148002: (OrderRejected, RejectReason.INVALID),
    # spot trade
    170131: (OrderRejected, RejectReason.INSUFFICIENT_BALANCE), 170033: (OrderRejected, RejectReason.INSUFFICIENT_BALANCE),
    170141: (OrderRejected, RejectReason.DUPLICATE_CLIENT_ORDER_ID), 170213: (OrderNotFound, None),
    170007: (VenueUnavailable, None), 170146: (VenueUnavailable, None),  # timed out: the order's fate is unknown
    **{code: (OrderRejected, RejectReason.INVALID) for code in (
        170105, 170115, 170116, 170117, 170121, 170124, 170130, 170135, 170136, 170137, 170140, 170148, 170151, 170157)},
}
SPOT_SYMBOL = "BTCUSDT"
SPOT_QUOTE_STEP = Decimal("0.01")  # a spot market buy's USDT amount: BTCUSDT's tick, as ccxt's cost_to_precision cuts it
SPOT_OPEN = ("New", "PartiallyFilled", "Untriggered")
SPOT_SETTLE_WAITS = (0.2, 0.5, 1.0)  # a market order the venue has not finished yet is read again after these
BINANCE_CODES: dict[int, tuple[type[VenueError], RejectReason | None]] = {
    -1003: (VenueRateLimited, None), -1021: (VenueClockSkew, None), -1022: (VenueAuthError, None),
    -2014: (VenueAuthError, None), -2015: (VenueAuthError, None), -1000: (VenueUnavailable, None),
    -1001: (VenueUnavailable, None), -1006: (VenueUnavailable, None), -1007: (VenueUnavailable, None),
    -1008: (VenueUnavailable, None), -2011: (OrderNotFound, None), -2013: (OrderNotFound, None),
    -4116: (OrderRejected, RejectReason.DUPLICATE_CLIENT_ORDER_ID),
    -5022: (OrderRejected, RejectReason.POST_ONLY_WOULD_CROSS), -2019: (OrderRejected, RejectReason.INSUFFICIENT_BALANCE),
    -2022: (OrderRejected, RejectReason.REDUCE_ONLY), -1111: (OrderRejected, RejectReason.INVALID),
    -1013: (OrderRejected, RejectReason.INVALID), -4164: (OrderRejected, RejectReason.INVALID),
    -1102: (OrderRejected, RejectReason.INVALID), -1121: (OrderRejected, RejectReason.INVALID),
}


def loopback_urls(urls: dict[str, Any], base: str) -> dict[str, Any]:
    """The client's URL table with every API entry (REST and WebSocket) moved to `base`, paths kept;
    entries that are not API endpoints (docs, www, testnet, demo) are dropped."""
    target = urlsplit(base)

    def move(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        if isinstance(value, list):
            return [move(v) for v in value]
        if isinstance(value, str) and "://" in value:
            parts = urlsplit(value)
            scheme = "ws" if parts.scheme in ("ws", "wss") else "http"
            return urlunsplit((scheme, target.netloc, parts.path, parts.query, parts.fragment))
        return value

    return {"api": move(urls["api"])}


def _client_config(session: aiohttp.ClientSession | None) -> dict[str, Any]:
    """ccxt settings every client gets: it keeps no copy of the last body it read (the markets, per client),
    only the last headers (Bybit's rate-limit reset is read from them); with `session`, its connections are the
    pool's, not a connection pool of its own."""
    config: dict[str, Any] = {"enableLastHttpResponse": False, "enableLastJsonResponse": False}
    if session is not None:
        config["session"] = session
    return config


def _dec(value: Any) -> Decimal | None:
    if value in (None, ""):
        return None
    return Decimal(str(value))


def _ms_to_dt(ms: Any) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, tz=UTC)


class _QuietBybit(ccxtpro.bybit):
    """ccxt's Bybit without its broker attribution header on POSTs."""

    def sign(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        request = super().sign(*args, **kwargs)
        if request.get("headers"):
            request["headers"].pop("Referer", None)
        return request


# ccxt builds its whole API description afresh for every instance; these parts are never written after
# construction, so every account's client of a venue can hold one copy
SHARED_DESCRIPTION = ("api", "exceptions", "has", "features", "ecdsaCurves", "ecdsaPrehashedAlgorithms", "httpExceptions")


class SharedDescription:
    """One venue's ccxt description, taken from its first client before that client sent anything, for the
    clients of the venue's other accounts. `options` is copied one level deep: a client's own top-level settings
    (time difference, unified-account status) stay its own, the static tables under them are shared."""

    def __init__(self, exchange: Any) -> None:
        self.attrs = {name: getattr(exchange, name) for name in SHARED_DESCRIPTION}
        self.options = dict(exchange.options)

    def adopt(self, exchange: Any) -> None:
        for name, value in self.attrs.items():
            setattr(exchange, name, value)
        exchange.options = dict(self.options)


class CcxtVenue:
    """Shared mechanics: error classification, rate-limit backoff, idempotent placement."""

    name: str
    codes: dict[int, tuple[type[VenueError], RejectReason | None]]

    def __init__(self, exchange: Any, account: str) -> None:
        self.ex = exchange
        self.account = account
        self._client_id_cache: dict[str, str] = {}
        self._markets: dict[str, MarketInfo] | None = None
        self._unified: dict[str, str] = {}
        self.markets_from: CcxtVenue | None = None  # the venue's client that loads its markets for every account

    async def close(self) -> None:
        await self.ex.close()

    # -- errors ---------------------------------------------------------------------------------
    def _body(self, exc: BaseError) -> dict[str, Any]:
        text = str(exc)
        start = text.find("{")
        if start < 0:
            return {}
        try:
            body = json.loads(text[start:])
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}

    def _code(self, body: dict[str, Any]) -> int | None:
        raise NotImplementedError

    def _retry_after(self) -> float | None:
        return None

    def classify(self, exc: BaseError) -> VenueError:
        body = self._body(exc)
        code = self._code(body)
        message = str(body.get("retMsg") or body.get("msg") or exc)[:300]
        if code is not None and code in self.codes:
            cls, reason = self.codes[code]
            if cls is OrderRejected:
                return OrderRejected(self.name, message, reason=reason or RejectReason.INVALID, code=code)
            if cls is VenueRateLimited:
                return VenueRateLimited(self.name, message, code=code, retry_after_s=self._retry_after())
            return cls(self.name, message, code=code)
        if isinstance(exc, NetworkError):
            return VenueUnavailable(self.name, f"{type(exc).__name__}: {message}")
        if isinstance(exc, AuthenticationError):
            return VenueAuthError(self.name, message, code=code)
        return VenueError(self.name, message, code=code)

    async def _call(self, method: str, *args: Any, retries_unavailable: int = READ_RETRIES, **kwargs: Any) -> Any:
        """One ccxt call: rate limits back off and retry; clock skew resyncs; reads retry a 5xx briefly."""
        attempt = 0
        unavailable = 0
        while True:
            try:
                return await getattr(self.ex, method)(*args, **kwargs)
            except BaseError as exc:
                error = self.classify(exc)
            attempt += 1
            if isinstance(error, VenueRateLimited) and attempt <= RATE_LIMIT_RETRIES:
                await asyncio.sleep(min(5.0, error.retry_after_s or 0.2 * 2 ** (attempt - 1)))
                continue
            if isinstance(error, VenueClockSkew) and attempt <= 2:
                await self._resync_clock()
                continue
            if isinstance(error, VenueUnavailable) and unavailable < retries_unavailable:
                unavailable += 1
                await asyncio.sleep(0.2 * unavailable)
                continue
            raise error

    async def _resync_clock(self) -> None:
        try:
            await self.ex.load_time_difference()
        except BaseError:
            pass

    # -- markets --------------------------------------------------------------------------------
    async def markets(self) -> dict[str, MarketInfo]:
        if self._markets is None and self.markets_from is not None:
            # public data, the same for every account: one copy per venue, not one per client
            infos = await self.markets_from.markets()
            self.ex.set_markets_from_exchange(self.markets_from.ex)
            self._unified, self._markets = self.markets_from._unified, infos
        if self._markets is None:
            loaded = await self._call("load_markets")
            infos = {}
            for unified, market in loaded.items():
                if not (market.get("swap") and market.get("linear")):
                    continue
                info = self._market_info(market)
                infos[info.symbol] = info
                self._unified[info.symbol] = unified
            self._markets = infos
        return self._markets

    def _market_info(self, market: dict[str, Any]) -> MarketInfo:
        raise NotImplementedError

    async def unified(self, symbol: str) -> str:
        await self.markets()
        try:
            return self._unified[symbol]
        except KeyError:
            raise OrderRejected(self.name, f"{symbol} is not a listed linear perpetual",
                                reason=RejectReason.INVALID) from None

    async def market(self, symbol: str) -> MarketInfo:
        markets = await self.markets()
        if symbol not in markets:
            raise OrderRejected(self.name, f"{symbol} is not a listed linear perpetual", reason=RejectReason.INVALID)
        return markets[symbol]

    # -- orders ---------------------------------------------------------------------------------
    def _create_params(self, request: OrderRequest) -> dict[str, Any]:
        raise NotImplementedError

    async def place_order(self, request: OrderRequest, *, looked_up: bool = False) -> OrderState:
        """Place once per client order id, whatever happens on the way. `looked_up`: the caller has just found no
        order under the id, so the first lookup is skipped (a duplicate answer is still looked up)."""
        existing = None if looked_up else await self.order_by_client_id(request.symbol, request.client_order_id)
        if existing is not None:
            return self._settled(existing)
        try:
            await self.submit_order(request)
        except (OrderRejected, VenueAuthError, VenueClockSkew, VenueRateLimited):
            raise  # refused before it reached the book
        except VenueError:
            # timed out, 5xx or an unknown answer: the venue may have accepted it, so find out before anyone
            # sends it again
            for delay in (0.0, 0.5, 1.5)[:LOOKUP_AFTER_TIMEOUT]:
                await asyncio.sleep(delay)
                found = await self.order_by_client_id(request.symbol, request.client_order_id)
                if found is not None:
                    return self._settled(found)
            raise
        placed = await self.order_by_client_id(request.symbol, request.client_order_id)
        if placed is None:
            raise VenueUnavailable(self.name, f"order {request.client_order_id} accepted but not found by its id")
        return self._settled(placed)

    async def submit_order(self, request: OrderRequest) -> bool:
        """Send an order once, without looking its id up first or after: place_order's one send. False when the
        venue already had the id (its duplicate answer); the order's state is read later by whoever owns it."""
        unified = await self.unified(request.symbol)
        try:
            await self._call("create_order", unified, request.type.value, request.side, str(request.qty),
                             str(request.price) if request.price is not None else None,
                             self._create_params(request), retries_unavailable=0)
        except OrderRejected as rej:
            if rej.reason != RejectReason.DUPLICATE_CLIENT_ORDER_ID:
                raise
            return False
        return True

    def _settled(self, order: OrderState) -> OrderState:
        """A post-only order the venue cancelled for crossing is a rejection, on every venue."""
        if order.reject_reason == RejectReason.POST_ONLY_WOULD_CROSS and order.filled == 0:
            raise OrderRejected(self.name, "post-only order would have crossed the book",
                                reason=RejectReason.POST_ONLY_WOULD_CROSS, order=order)
        return order

    async def cancel_order(self, symbol: str, client_order_id: str) -> OrderState | None:
        """Cancel by client id. Already filled, cancelled or unknown is success: returns the final state
        (None when the venue never had the order)."""
        unified = await self.unified(symbol)
        try:
            await self._call("cancel_order", None, unified, self._cancel_params(client_order_id))
        except OrderNotFound:
            pass
        return await self.order_by_client_id(symbol, client_order_id)

    def _cancel_params(self, client_order_id: str) -> dict[str, Any]:
        raise NotImplementedError

    @staticmethod
    def _windows(start_ms: int | None, until_ms: int) -> list[tuple[int | None, int]]:
        """Request windows from a cursor to now, none longer than the venues allow."""
        if start_ms is None:
            return [(None, until_ms)]
        begin, out = max(0, start_ms - OVERLAP_MS), []
        while begin < until_ms:
            out.append((begin, min(until_ms, begin + WINDOW_MS)))
            begin += WINDOW_MS
        return out or [(begin, until_ms)]

    async def open_orders(self, symbol: str) -> list[OrderState]:
        unified = await self.unified(symbol)
        orders = await self._call("fetch_open_orders", unified)
        return [self._order_state(o, symbol) for o in orders]

    def _order_state(self, order: dict[str, Any], symbol: str) -> OrderState:
        info = order.get("info") or {}
        status = {"open": OrderStatus.OPEN, "closed": OrderStatus.FILLED, "canceled": OrderStatus.CANCELLED,
                  "expired": OrderStatus.EXPIRED, "rejected": OrderStatus.REJECTED}.get(order.get("status") or "",
                                                                                        OrderStatus.OPEN)
        filled = _dec(order.get("filled")) or Decimal(0)
        qty = _dec(order.get("amount")) or Decimal(0)
        if status == OrderStatus.OPEN and filled > 0:
            status = OrderStatus.PARTIALLY_FILLED
        tif = order.get("timeInForce")
        post_only = bool(order.get("postOnly")) or tif in ("PO", "GTX")
        return OrderState(
            venue=self.name, symbol=symbol, client_order_id=str(order.get("clientOrderId") or ""),
            order_id=str(order.get("id")), side=str(order.get("side")),
            type=OrderType.MARKET if order.get("type") == "market" else OrderType.LIMIT, qty=qty,
            price=_dec(order.get("price")) or None, filled=filled,
            avg_price=_dec(order.get("average")) if filled else None, status=status,
            reduce_only=bool(order.get("reduceOnly")),
            time_in_force=TimeInForce.POST_ONLY if post_only else (TimeInForce.IOC if tif == "IOC" else TimeInForce.GTC),
            reject_reason=self._reject_reason(info),
            updated=_ms_to_dt(order.get("lastUpdateTimestamp") or order.get("timestamp") or time.time() * 1000))

    def _reject_reason(self, info: dict[str, Any]) -> RejectReason | None:
        return None

    # -- prices ---------------------------------------------------------------------------------
    async def funding_rate(self, symbol: str) -> FundingRate:
        data = await self._call("fetch_funding_rate", await self.unified(symbol))
        ts = data.get("fundingTimestamp") or data.get("nextFundingTimestamp")
        return FundingRate(venue=self.name, symbol=symbol, rate=_dec(data.get("fundingRate")) or Decimal(0),
                           next_funding_time=_ms_to_dt(ts) if ts else None)

    # -- positions ------------------------------------------------------------------------------
    async def set_leverage(self, symbol: str, leverage: Decimal) -> None:
        """Cap a perp position's leverage before it trades."""
        await self._call("set_leverage", int(leverage), await self.unified(symbol))

    async def position(self, symbol: str) -> VenuePosition:
        unified = await self.unified(symbol)
        rows = await self._call("fetch_positions", [unified])
        for row in rows:
            contracts = _dec(row.get("contracts")) or Decimal(0)
            if row.get("symbol") != unified or contracts == 0:
                continue
            size = contracts if row.get("side") == "long" else -contracts
            return VenuePosition(venue=self.name, symbol=symbol, size=size, entry_price=_dec(row.get("entryPrice")),
                                 mark_price=_dec(row.get("markPrice")),
                                 liquidation_price=_dec(row.get("liquidationPrice")),
                                 margin=_dec(row.get("collateral")) or _dec(row.get("initialMargin")),
                                 unrealised_pnl=_dec(row.get("unrealizedPnl")), leverage=_dec(row.get("leverage")))
        return VenuePosition(venue=self.name, symbol=symbol, size=Decimal(0))


class BybitVenue(CcxtVenue):
    name = "bybit"
    codes = BYBIT_CODES

    @classmethod
    def build(cls, account: str, credentials: Credentials, *, base_url: str | None, rate_limit: bool,
              timeout_ms: int = 10_000, session: aiohttp.ClientSession | None = None) -> BybitVenue:
        exchange = _QuietBybit({
            "apiKey": credentials.api_key.get_secret_value(), "secret": credentials.api_secret.get_secret_value(),
            "enableRateLimit": rate_limit, "timeout": timeout_ms, **_client_config(session),
            "options": {"defaultType": "swap", "fetchMarkets": {"types": ["linear"]}, "enableUnifiedAccount": True,
                        "enableUnifiedMargin": False, "recvWindow": 5000, "brokerId": ""},
        })
        exchange.has["fetchCurrencies"] = False
        if base_url:
            exchange.urls = loopback_urls(exchange.urls, base_url)
        return cls(exchange, account)

    def _code(self, body: dict[str, Any]) -> int | None:
        code = body.get("retCode")
        return int(code) if code not in (None, 0, "0") else None

    def _retry_after(self) -> float | None:
        reset = (self.ex.last_response_headers or {}).get("X-Bapi-Limit-Reset-Timestamp")
        return max(0.05, int(reset) / 1000 - time.time()) if reset else None

    def _market_info(self, market: dict[str, Any]) -> MarketInfo:
        info = market["info"]
        lot, price = info.get("lotSizeFilter", {}), info.get("priceFilter", {})
        return MarketInfo(venue=self.name, symbol=market["id"], base=market["base"], quote=market["quote"],
                          tick_size=Decimal(price["tickSize"]), qty_step=Decimal(lot["qtyStep"]),
                          min_qty=Decimal(lot["minOrderQty"]), min_notional=Decimal(lot.get("minNotionalValue") or 0),
                          max_leverage=_dec(info.get("leverageFilter", {}).get("maxLeverage")))

    async def ticker(self, symbol: str) -> Ticker:
        data = await self._call("fetch_ticker", await self.unified(symbol))
        info = data.get("info") or {}
        return Ticker(venue=self.name, symbol=symbol, last=Decimal(str(data["last"])), bid=_dec(data.get("bid")),
                      ask=_dec(data.get("ask")), mark=_dec(info.get("markPrice")), index=_dec(info.get("indexPrice")),
                      ts=_ms_to_dt(data.get("timestamp") or time.time() * 1000))

    def _create_params(self, request: OrderRequest) -> dict[str, Any]:
        params: dict[str, Any] = {"clientOrderId": request.client_order_id, "reduceOnly": request.reduce_only,
                                  "positionIdx": 0}
        if request.time_in_force == TimeInForce.POST_ONLY:
            params["postOnly"] = True
        elif request.time_in_force == TimeInForce.IOC:
            params["timeInForce"] = "IOC"
        return params

    def _cancel_params(self, client_order_id: str) -> dict[str, Any]:
        return {"orderLinkId": client_order_id}

    def _reject_reason(self, info: dict[str, Any]) -> RejectReason | None:
        return RejectReason.POST_ONLY_WOULD_CROSS if info.get("rejectReason") == "EC_PostOnlyWillTakeLiquidity" else None

    async def order_by_client_id(self, symbol: str, client_order_id: str) -> OrderState | None:
        unified = await self.unified(symbol)
        response = await self._call("private_get_v5_order_realtime",
                                    {"category": "linear", "symbol": symbol, "orderLinkId": client_order_id})
        rows = (response.get("result") or {}).get("list") or []
        if not rows:
            response = await self._call("private_get_v5_order_history",
                                        {"category": "linear", "symbol": symbol, "orderLinkId": client_order_id})
            rows = (response.get("result") or {}).get("list") or []
        if not rows:
            return None
        return self._order_state(self.ex.parse_order(rows[0], self.ex.market(unified)), symbol)

    # -- spot ---------------------------------------------------------------------------------------
    async def buy_spot(self, client_order_id: str, usdt: Decimal) -> SpotFill:
        """Buy BTC spot with `usdt` (cut down to the venue's step) at market, once per client order id: an id the
        venue already has is returned as it stands, and a timeout or a duplicate answer is resolved by looking
        the id up, never by sending again. Raises ValueError for a bad id or an amount that cuts to nothing,
        OrderRejected when the venue refuses (INSUFFICIENT_BALANCE when the USDT is not there)."""
        if not CLIENT_ORDER_ID_RE.match(client_order_id):
            raise ValueError(f"client order id {client_order_id!r} must be 1-36 characters of A-Z a-z 0-9 _ -")
        usdt = Decimal(usdt)
        amount = usdt.quantize(SPOT_QUOTE_STEP, rounding=ROUND_DOWN) if usdt.is_finite() else Decimal(0)
        if amount <= 0:
            raise ValueError(f"spot buy amount must be positive at the venue's step {SPOT_QUOTE_STEP} USDT, got {usdt}")
        existing = await self._spot_order(client_order_id)
        if existing is not None:
            return await self._spot_settled(client_order_id, existing)
        try:
            await self._call("private_post_v5_order_create", {
                "category": "spot", "symbol": SPOT_SYMBOL, "side": "Buy", "orderType": "Market", "qty": str(amount),
                "marketUnit": "quoteCoin", "orderLinkId": client_order_id}, retries_unavailable=0)
        except OrderRejected as rej:
            if rej.reason != RejectReason.DUPLICATE_CLIENT_ORDER_ID:
                raise OrderRejected(self.name, f"spot buy {client_order_id} of {amount} USDT refused: {rej.detail}",
                                    reason=rej.reason, code=rej.code) from None
        except (VenueAuthError, VenueClockSkew, VenueRateLimited):
            raise  # refused before it reached the venue's matching
        except VenueError:
            # timed out, 5xx or an unknown answer: the venue may have filled it, so find out before anyone sends it
            # again
            for delay in (0.0, 0.5, 1.5)[:LOOKUP_AFTER_TIMEOUT]:
                await asyncio.sleep(delay)
                found = await self._spot_order(client_order_id)
                if found is not None:
                    return await self._spot_settled(client_order_id, found)
            raise
        placed = await self._spot_order(client_order_id)
        if placed is None:
            raise VenueUnavailable(self.name, f"spot order {client_order_id} accepted but not found by its id")
        return await self._spot_settled(client_order_id, placed)

    async def _spot_order(self, client_order_id: str) -> dict[str, Any] | None:
        """The venue's spot order row for a client id (open ones first, then history), or None."""
        params = {"category": "spot", "symbol": SPOT_SYMBOL, "orderLinkId": client_order_id}
        for method in ("private_get_v5_order_realtime", "private_get_v5_order_history"):
            rows = ((await self._call(method, dict(params))).get("result") or {}).get("list") or []
            if rows:
                return rows[0]
        return None

    async def _spot_settled(self, client_order_id: str, row: dict[str, Any]) -> SpotFill:
        """The fill of a spot market order once the venue has finished it (read again while it is working)."""
        for delay in SPOT_SETTLE_WAITS:
            if row.get("orderStatus") not in SPOT_OPEN:
                break
            await asyncio.sleep(delay)
            row = await self._spot_order(client_order_id) or row
        status = row.get("orderStatus")
        if status in SPOT_OPEN:
            raise VenueUnavailable(self.name, f"spot order {client_order_id} still {status}")
        bought = _dec(row.get("cumExecQty")) or Decimal(0)
        spent = _dec(row.get("cumExecValue")) or Decimal(0)
        if row.get("side") != "Buy":
            raise ValueError(f"client order id {client_order_id} is a spot {row.get('side')} order, not a buy")
        if bought <= 0:
            raise OrderRejected(self.name, f"spot buy {client_order_id} ended {status} with nothing bought "
                                           f"({row.get('rejectReason') or 'no reason given'})", reason=RejectReason.INVALID)
        detail = row.get("cumFeeDetail")
        if isinstance(detail, dict) and detail:
            fee_btc = _dec(detail.get("BTC")) or Decimal(0)
        else:  # no breakdown: Bybit charges a spot buy's fee in the coin bought
            fee_btc = _dec(row.get("cumExecFee")) or Decimal(0)
        return SpotFill(order_id=str(row["orderId"]), client_order_id=str(row.get("orderLinkId") or client_order_id),
                        btc_bought=bought, usdt_spent=spent, fee_btc=fee_btc, btc_received=bought - fee_btc,
                        avg_price=_dec(row.get("avgPrice")) or spent / bought)

    async def events_since(self, symbol: str, cursor: str | None, *, since_ms: int | None = None,
                           until: datetime | None = None) -> AccountEvents:
        """Trades, liquidations (BustTrade) and funding from execution/list, in windows of at most 7 days from
        the cursor (the newest execTime seen; `since_ms` when there is none yet) to now, re-reading the last
        minute."""
        end_ms = int((until.timestamp() if until else time.time()) * 1000)
        start = int(cursor) if cursor else since_ms
        rows: list[dict[str, Any]] = []
        for begin, finish in self._windows(start, end_ms):
            rows += await self._executions({"startTime": begin, "endTime": finish} if begin is not None else {}, symbol)
        newest = max([start or 0, *(int(r["execTime"]) for r in rows)])
        fills, funding = self._parse_executions(rows, symbol)
        return AccountEvents(fills=fills, funding=funding, cursor=str(newest) if newest else cursor)

    async def fills_for_order(self, symbol: str, client_order_id: str) -> list[VenueFill]:
        """Every fill of one of our orders, whatever the cursor says."""
        fills, _ = self._parse_executions(await self._executions({"orderLinkId": client_order_id}, symbol), symbol)
        return fills

    async def _executions(self, extra: dict[str, Any], symbol: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        page_cursor = None
        while True:
            params: dict[str, Any] = {"category": "linear", "symbol": symbol, "limit": 100, **extra}
            params = {k: v for k, v in params.items() if v is not None}
            if page_cursor:
                params["cursor"] = page_cursor
            result = (await self._call("private_get_v5_execution_list", params)).get("result") or {}
            rows += result.get("list") or []
            page_cursor = result.get("nextPageCursor")
            if not page_cursor:
                return rows

    def _parse_executions(self, rows: list[dict[str, Any]], symbol: str) -> tuple[list[VenueFill], list[VenueFunding]]:
        fills: list[VenueFill] = []
        funding: list[VenueFunding] = []
        for row in rows:
            ts = int(row["execTime"])
            if row.get("execType") == "Funding":
                funding.append(VenueFunding(
                    venue=self.name, account=self.account, symbol=symbol, funding_id=row["execId"],
                    amount=-Decimal(row["execFee"]), rate=_dec(row.get("feeRate")), ts=_ms_to_dt(ts), payload=row))
            elif row.get("execType") in ("Trade", "BustTrade", "AdlTrade"):
                fills.append(VenueFill(
                    venue=self.name, account=self.account, symbol=symbol, fill_id=row["execId"],
                    order_id=row.get("orderId") or None, client_order_id=row.get("orderLinkId") or None,
                    side="buy" if row["side"] == "Buy" else "sell", qty=Decimal(row["execQty"]),
                    price=Decimal(row["execPrice"]), fee=Decimal(row.get("execFee") or 0),
                    fee_asset=row.get("feeCurrency") or "USDT", liquidation=row["execType"] != "Trade",
                    ts=_ms_to_dt(ts), payload=row))
        fills.sort(key=lambda f: (f.ts, f.payload.get("seq", 0)))
        funding.sort(key=lambda f: f.ts)
        return fills, funding

    async def set_leverage(self, symbol: str, leverage: Decimal) -> None:
        """Bybit answers 110043 ("leverage not modified") when it already is: that is success."""
        lev = f"{leverage.normalize():f}"  # 10, not 1E+1
        try:
            await self._call("private_post_v5_position_set_leverage", {"category": "linear", "symbol": symbol,
                                                                       "buyLeverage": lev, "sellLeverage": lev})
        except VenueError as err:
            if "110043" not in str(err) and "not modified" not in str(err):
                raise


class BinanceUsdmVenue(CcxtVenue):
    name = "binanceusdm"
    codes = BINANCE_CODES

    @classmethod
    def build(cls, account: str, credentials: Credentials, *, base_url: str | None, rate_limit: bool,
              timeout_ms: int = 10_000, session: aiohttp.ClientSession | None = None) -> BinanceUsdmVenue:
        exchange = ccxtpro.binanceusdm({
            "apiKey": credentials.api_key.get_secret_value(), "secret": credentials.api_secret.get_secret_value(),
            "enableRateLimit": rate_limit, "timeout": timeout_ms, **_client_config(session),
            "options": {"defaultType": "future", "fetchCurrencies": False, "adjustForTimeDifference": False,
                        "recvWindow": 5000, "broker": {"future": "", "swap": "", "spot": "", "margin": "",
                                                      "delivery": "", "option": ""}},
        })
        if base_url:
            exchange.urls = loopback_urls(exchange.urls, base_url)
        return cls(exchange, account)

    def _code(self, body: dict[str, Any]) -> int | None:
        code = body.get("code")
        return int(code) if code not in (None, 200, "200") else None

    def _retry_after(self) -> float | None:
        value = (self.ex.last_response_headers or {}).get("Retry-After")
        return float(value) if value else None

    def _market_info(self, market: dict[str, Any]) -> MarketInfo:
        filters = {f["filterType"]: f for f in market["info"].get("filters", [])}
        return MarketInfo(venue=self.name, symbol=market["id"], base=market["base"], quote=market["quote"],
                          tick_size=Decimal(filters["PRICE_FILTER"]["tickSize"]),
                          qty_step=Decimal(filters["LOT_SIZE"]["stepSize"]),
                          min_qty=Decimal(filters["LOT_SIZE"]["minQty"]),
                          min_notional=Decimal(filters.get("MIN_NOTIONAL", {}).get("notional") or 0))

    async def ticker(self, symbol: str) -> Ticker:
        unified = await self.unified(symbol)
        data = await self._call("fetch_ticker", unified)
        book = await self._call("fapiPublicGetTickerBookTicker", {"symbol": symbol})
        premium = await self._call("fapiPublicGetPremiumIndex", {"symbol": symbol})
        return Ticker(venue=self.name, symbol=symbol, last=Decimal(str(data["last"])), bid=_dec(book.get("bidPrice")),
                      ask=_dec(book.get("askPrice")), mark=_dec(premium.get("markPrice")),
                      index=_dec(premium.get("indexPrice")), ts=_ms_to_dt(data.get("timestamp") or time.time() * 1000))

    def _create_params(self, request: OrderRequest) -> dict[str, Any]:
        params: dict[str, Any] = {"clientOrderId": request.client_order_id, "reduceOnly": request.reduce_only}
        if request.time_in_force == TimeInForce.POST_ONLY:
            params["timeInForce"] = "GTX"
        elif request.time_in_force == TimeInForce.IOC:
            params["timeInForce"] = "IOC"
        return params

    def _cancel_params(self, client_order_id: str) -> dict[str, Any]:
        return {"origClientOrderId": client_order_id}

    async def order_by_client_id(self, symbol: str, client_order_id: str) -> OrderState | None:
        unified = await self.unified(symbol)
        try:
            raw = await self._call("fapiPrivateGetOrder", {"symbol": symbol, "origClientOrderId": client_order_id})
        except OrderNotFound:
            return None
        return self._order_state(self.ex.parse_order(raw, self.ex.market(unified)), symbol)

    async def events_since(self, symbol: str, cursor: str | None, *, since_ms: int | None = None,
                           until: datetime | None = None) -> AccountEvents:
        """userTrades and FUNDING_FEE income, each with its own cursor (`"<trades ms>,<income ms>"`; `since_ms`
        when there is none yet), read in windows of at most 7 days to now with a minute of overlap, paging
        past 1,000 rows."""
        end_ms = int((until.timestamp() if until else time.time()) * 1000)
        trade_from, income_from = (int(x) if x else since_ms for x in (cursor.split(",") if cursor else ("", "")))
        trades: list[dict[str, Any]] = []
        incomes: list[dict[str, Any]] = []
        for begin, finish in self._windows(trade_from, end_ms):
            trades += await self._paged("fapiPrivateGetUserTrades", symbol, begin, finish, {})
        for begin, finish in self._windows(income_from, end_ms):
            incomes += await self._paged("fapiPrivateGetIncome", symbol, begin, finish, {"incomeType": "FUNDING_FEE"})
        fills = await self._parse_trades(trades, symbol)
        funding = [VenueFunding(venue=self.name, account=self.account, symbol=symbol, funding_id=str(row["tranId"]),
                                amount=Decimal(row["income"]), ts=_ms_to_dt(int(row["time"])), payload=row)
                   for row in incomes]
        newest_trade = max([trade_from or 0, *(int(r["time"]) for r in trades)])
        newest_income = max([income_from or 0, *(int(r["time"]) for r in incomes)])
        return AccountEvents(fills=fills, funding=funding, cursor=f"{newest_trade or ''},{newest_income or ''}")

    async def fills_for_order(self, symbol: str, client_order_id: str) -> list[VenueFill]:
        order = await self.order_by_client_id(symbol, client_order_id)
        if order is None:
            return []
        trades = await self._call("fapiPrivateGetUserTrades", {"symbol": symbol, "orderId": order.order_id})
        return await self._parse_trades(trades, symbol)

    async def _paged(self, method: str, symbol: str, begin: int | None, finish: int, extra: dict[str, Any]) -> list:
        rows: list[dict[str, Any]] = []
        while True:
            params: dict[str, Any] = {"symbol": symbol, "limit": 1000, "endTime": finish, **extra}
            if begin is not None:
                params["startTime"] = begin
            page = await self._call(method, params)
            rows += page
            if len(page) < 1000:
                return rows
            begin = int(page[-1]["time"])  # the next page starts where this one ended (repeats are dropped)

    async def _client_ids(self, symbol: str, order_ids: set[str]) -> dict[str, str]:
        """Our client order id for each Binance order id (userTrades carries only the latter). Looked up
        per order, whatever its age, and remembered: allOrders only reaches back 7 days."""
        for order_id in order_ids - self._client_id_cache.keys():
            try:
                raw = await self._call("fapiPrivateGetOrder", {"symbol": symbol, "orderId": order_id})
                self._client_id_cache[order_id] = raw.get("clientOrderId") or ""
            except OrderNotFound:
                self._client_id_cache[order_id] = ""
        return {oid: self._client_id_cache[oid] for oid in order_ids}

    async def _parse_trades(self, trades: list[dict[str, Any]], symbol: str) -> list[VenueFill]:
        orders = await self._client_ids(symbol, {str(t["orderId"]) for t in trades})
        fills, seen = [], set()
        for row in trades:
            if row["id"] in seen:
                continue
            seen.add(row["id"])
            client_id = orders.get(str(row["orderId"])) or None
            fills.append(VenueFill(
                venue=self.name, account=self.account, symbol=symbol, fill_id=str(row["id"]),
                order_id=str(row["orderId"]), client_order_id=client_id, side=row["side"].lower(),
                qty=Decimal(row["qty"]), price=Decimal(row["price"]), fee=Decimal(row.get("commission") or 0),
                fee_asset=row.get("commissionAsset") or "USDT",
                liquidation=bool(client_id and client_id.startswith("autoclose-")), ts=_ms_to_dt(int(row["time"])),
                payload=row))
        return fills
