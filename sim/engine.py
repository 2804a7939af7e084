"""The matching engine behind every emulated perp venue: accounts, orders, fills, positions, funding and
forced liquidation. Each venue has its own instance (own accounts and fees) over one shared Market.

Liquidity model: around the current price there is a book of `depth_levels` levels per side, spaced
`level_step_bps` apart, `level_qty` each; a marketable order takes from it level by level. A resting
limit order fills, as maker, when the last price trades through it, `maker_fill_qty` per price update
(None: all at once), which is how tests get partial fills. Positions are one-way and isolated-margin.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from enum import StrEnum
from typing import Any

from sim.instruments import Instrument
from sim.market import Market, Quote, wall_ms

ZERO = Decimal(0)


class RejectReason(StrEnum):
    DUPLICATE_CLIENT_ID = "duplicate_client_id"
    POST_ONLY_WOULD_CROSS = "post_only_would_cross"
    INSUFFICIENT_BALANCE = "insufficient_balance"
    REDUCE_ONLY = "reduce_only"
    NOT_FOUND = "not_found"
    BAD_QTY = "bad_qty"
    BAD_PRICE = "bad_price"
    UNKNOWN_SYMBOL = "unknown_symbol"
    NOT_CANCELLABLE = "not_cancellable"
    INJECTED = "injected"


class Reject(Exception):
    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Status(StrEnum):
    NEW = "new"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # IOC / market remainder
    REJECTED = "rejected"

    @property
    def open(self) -> bool:
        return self in (Status.NEW, Status.PARTIALLY_FILLED)


@dataclass
class EngineConfig:
    maker_fee: Decimal
    taker_fee: Decimal
    post_only_style: str  # "cancel": accepted then cancelled (Bybit); "reject": refused (Binance)
    spread_bps: Decimal = Decimal("1")
    depth_levels: int = 10
    level_qty: Decimal = Decimal("5")
    level_step_bps: Decimal = Decimal("2")
    maker_fill_qty: Decimal | None = None
    default_leverage: Decimal = Decimal("10")

    def public(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Decimal) else v) for k, v in self.__dict__.items()}


@dataclass
class Order:
    order_id: str
    client_id: str
    account: str
    symbol: str
    side: str  # buy | sell
    type: str  # limit | market
    tif: str  # GTC | IOC | FOK | PostOnly
    price: Decimal | None
    qty: Decimal
    reduce_only: bool
    created_ms: int
    updated_ms: int
    filled: Decimal = ZERO
    cum_value: Decimal = ZERO
    cum_fee: Decimal = ZERO
    status: Status = Status.NEW
    reject_reason: str | None = None

    @property
    def leaves(self) -> Decimal:
        return self.qty - self.filled if self.status.open else ZERO

    @property
    def avg_price(self) -> Decimal | None:
        return (self.cum_value / self.filled) if self.filled else None

    @property
    def sign(self) -> int:
        return 1 if self.side == "buy" else -1


@dataclass
class Fill:
    exec_id: str
    order_id: str
    client_id: str
    symbol: str
    side: str
    qty: Decimal
    price: Decimal
    fee: Decimal  # positive = paid
    fee_rate: Decimal
    is_maker: bool
    exec_type: str  # Trade | Funding | BustTrade
    ts_ms: int
    realised_pnl: Decimal = ZERO
    seq: int = 0

    @property
    def value(self) -> Decimal:
        return self.qty * self.price


@dataclass
class Income:
    """Binance-style income record: amount received (negative = paid)."""

    id: int
    symbol: str
    type: str  # FUNDING_FEE | COMMISSION | REALIZED_PNL | INSURANCE_CLEAR
    amount: Decimal
    asset: str
    ts_ms: int
    info: str = ""
    trade_id: str = ""


@dataclass
class Position:
    symbol: str
    size: Decimal = ZERO  # signed, negative = short
    entry: Decimal = ZERO
    margin: Decimal = ZERO  # isolated margin held
    realised: Decimal = ZERO
    leverage: Decimal = Decimal("10")
    created_ms: int = 0
    updated_ms: int = 0

    def unrealised(self, mark: Decimal) -> Decimal:
        return self.size * (mark - self.entry)

    def liquidation_price(self, mmr: Decimal) -> Decimal | None:
        q = abs(self.size)
        if q == 0:
            return None
        if self.size < 0:
            return (self.margin + q * self.entry) / (q * (1 + mmr))
        price = (q * self.entry - self.margin) / (q * (1 - mmr))
        return price if price > 0 else ZERO


@dataclass
class Account:
    venue: str
    name: str
    api_key: str
    secret: str
    balances: dict[str, Decimal]
    positions: dict[str, Position] = field(default_factory=dict)
    orders: list[Order] = field(default_factory=list)
    by_client: dict[str, Order] = field(default_factory=dict)
    by_id: dict[str, Order] = field(default_factory=dict)
    fills: list[Fill] = field(default_factory=list)
    incomes: list[Income] = field(default_factory=list)
    leverage: dict[str, Decimal] = field(default_factory=dict)
    default_leverage: Decimal = Decimal("10")

    def lev(self, symbol: str) -> Decimal:
        return self.leverage.get(symbol, self.default_leverage)

    def position(self, symbol: str) -> Position:
        pos = self.positions.get(symbol)
        if pos is None:
            pos = self.positions[symbol] = Position(symbol=symbol)
        return pos

    def open_orders(self, symbol: str | None = None) -> list[Order]:
        return [o for o in self.orders if o.status.open and (symbol is None or o.symbol == symbol)]

    def available(self) -> Decimal:
        """Wallet USDT not held as position margin or reserved by resting orders."""
        held = sum((p.margin for p in self.positions.values()), ZERO)
        reserved = sum((o.leaves * (o.price or ZERO) / self.lev(o.symbol)
                        for o in self.open_orders() if not o.reduce_only), ZERO)
        return self.balances.get("USDT", ZERO) - held - reserved


Listener = Callable[[str, Account, Any], None]  # (topic: order|execution|position, account, payload)


class Engine:
    def __init__(self, venue: str, market: Market, instruments: dict[str, Instrument], config: EngineConfig,
                 seed: int = 0, numeric_order_ids: bool = False) -> None:
        self.venue = venue
        self.market = market
        self.instruments = instruments
        self.config = config
        self.accounts: dict[str, Account] = {}  # by api key
        self._rng = random.Random(f"{venue}:{seed}")
        self._numeric_ids = numeric_order_ids
        self._order_seq = 0
        self._fill_seq = 0
        self._income_seq = 0
        self._listeners: list[Listener] = []
        self.liquidations: list[dict[str, Any]] = []
        market.subscribe(self._on_price)

    # -- identity & accounts --------------------------------------------------------------------
    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _next_order_id(self) -> str:
        self._order_seq += 1
        return str(8_389_765_000_000_000_000 + self._order_seq) if self._numeric_ids else self._uuid()

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _emit(self, topic: str, account: Account, payload: Any) -> None:
        for listener in self._listeners:
            listener(topic, account, payload)

    def create_account(self, name: str, api_key: str, secret: str, balances: dict[str, Decimal]) -> tuple[Account, bool]:
        """Create an account, or return the existing one (and False) when the same name and keys ask again."""
        existing = self.accounts.get(api_key)
        if existing is not None:
            if existing.name != name or existing.secret != secret:
                raise ValueError(f"api key already belongs to account {existing.name!r} with another secret")
            return existing, False
        if any(a.name == name for a in self.accounts.values()):
            raise ValueError(f"account {name!r} exists on {self.venue} with another api key")
        account = Account(venue=self.venue, name=name, api_key=api_key, secret=secret, balances=dict(balances),
                          default_leverage=self.config.default_leverage)
        self.accounts[api_key] = account
        return account, True

    def account_by_name(self, name: str) -> Account | None:
        return next((a for a in self.accounts.values() if a.name == name), None)

    def instrument(self, symbol: str) -> Instrument:
        try:
            return self.instruments[symbol]
        except KeyError:
            raise Reject(RejectReason.UNKNOWN_SYMBOL, f"symbol {symbol} is not listed") from None

    # -- book -----------------------------------------------------------------------------------
    def touch(self, symbol: str) -> tuple[Decimal, Decimal]:
        """Best bid and ask: the last price +/- half the spread, on the tick grid, at least one tick apart."""
        inst, last = self.instrument(symbol), self.market.quote(symbol).last
        half = last * self.config.spread_bps / Decimal(20000)
        bid = ((last - half) / inst.tick).to_integral_value(rounding=ROUND_FLOOR) * inst.tick
        ask = ((last + half) / inst.tick).to_integral_value(rounding=ROUND_CEILING) * inst.tick
        if ask <= bid:
            ask = bid + inst.tick
        return bid, ask

    def levels(self, symbol: str, side: str) -> list[tuple[Decimal, Decimal]]:
        """The liquidity a taker on `side` meets: (price, qty) from the touch outwards."""
        inst = self.instrument(symbol)
        bid, ask = self.touch(symbol)
        start, direction = (ask, 1) if side == "buy" else (bid, -1)
        step = max(inst.tick, ((start * self.config.level_step_bps / 10000) / inst.tick).to_integral_value() * inst.tick)
        return [(start + direction * i * step, self.config.level_qty) for i in range(self.config.depth_levels)]

    # -- orders ---------------------------------------------------------------------------------
    def place(self, account: Account, *, symbol: str, side: str, type: str, qty: Decimal, price: Decimal | None,
              tif: str, reduce_only: bool, client_id: str) -> Order:
        inst = self.instrument(symbol)
        if client_id in account.by_client:
            raise Reject(RejectReason.DUPLICATE_CLIENT_ID, f"client order id {client_id} already used")
        if side not in ("buy", "sell") or type not in ("limit", "market"):
            raise Reject(RejectReason.BAD_QTY, f"bad side/type {side}/{type}")
        if qty <= 0 or not inst.on_step(qty) or qty < inst.min_qty or qty > inst.max_qty:
            raise Reject(RejectReason.BAD_QTY, f"qty {qty} outside [{inst.min_qty}, {inst.max_qty}] step {inst.qty_step}")
        if type == "market" and qty > inst.max_market_qty:
            raise Reject(RejectReason.BAD_QTY, f"market order qty {qty} above the market limit {inst.max_market_qty}")
        if type == "limit":
            if price is None or price <= 0 or not inst.on_tick(price):
                raise Reject(RejectReason.BAD_PRICE, f"price {price} not on tick {inst.tick}")
        ref_price = price if price is not None else self.market.quote(symbol).last
        if not reduce_only and qty * ref_price < inst.min_notional:
            raise Reject(RejectReason.BAD_QTY, f"order value {qty * ref_price} below minimum {inst.min_notional}")

        pos = account.position(symbol)
        sign = 1 if side == "buy" else -1
        if reduce_only:
            if pos.size == 0 or (pos.size > 0) == (sign > 0):
                raise Reject(RejectReason.REDUCE_ONLY, "reduce-only order would not reduce the position")
            qty = min(qty, abs(pos.size))
        else:
            lev = account.lev(symbol)
            opening = qty if pos.size == 0 or (pos.size > 0) == (sign > 0) else max(ZERO, qty - abs(pos.size))
            needed = opening * ref_price / lev + qty * ref_price * self.config.taker_fee
            if opening > 0 and needed > account.available():
                raise Reject(RejectReason.INSUFFICIENT_BALANCE,
                             f"needs {needed:.2f} USDT margin, {account.available():.2f} available")

        now = wall_ms()
        order = Order(order_id=self._next_order_id(), client_id=client_id, account=account.name, symbol=symbol,
                      side=side, type=type, tif=tif if type == "limit" else "IOC", price=price, qty=qty,
                      reduce_only=reduce_only, created_ms=now, updated_ms=now)
        bid, ask = self.touch(symbol)
        crosses = type == "market" or (side == "buy" and price >= ask) or (side == "sell" and price <= bid)
        if tif == "PostOnly" and crosses:
            if self.config.post_only_style == "reject":
                raise Reject(RejectReason.POST_ONLY_WOULD_CROSS, "post-only order would immediately take liquidity")
            order.status, order.reject_reason = Status.CANCELLED, "EC_PostOnlyWillTakeLiquidity"
        self._register(account, order)
        if order.status.open and crosses and order.tif == "FOK" and self._available_to(order) < order.qty:
            order.status = Status.EXPIRED  # fill-or-kill: not all of it is there, so none of it trades
        if order.status.open and crosses:
            self._take(account, order)
        if order.status.open and order.tif in ("IOC", "FOK"):
            order.status = Status.EXPIRED
            order.updated_ms = wall_ms()
        self._emit("order", account, order)
        return order

    def _register(self, account: Account, order: Order) -> None:
        account.orders.append(order)
        if order.client_id:
            account.by_client[order.client_id] = order
        account.by_id[order.order_id] = order

    def _available_to(self, order: Order) -> Decimal:
        return sum((qty for price, qty in self.levels(order.symbol, order.side)
                    if order.type == "market" or (price <= order.price if order.side == "buy" else price >= order.price)),
                   ZERO)

    def _take(self, account: Account, order: Order) -> None:
        for level_price, level_qty in self.levels(order.symbol, order.side):
            if order.leaves <= 0:
                break
            if order.type == "limit" and ((order.side == "buy" and level_price > order.price) or
                                          (order.side == "sell" and level_price < order.price)):
                break
            self._fill(account, order, min(order.leaves, level_qty), level_price, is_maker=False)

    def cancel(self, account: Account, *, order_id: str | None = None, client_id: str | None = None) -> Order:
        order = self.find(account, order_id=order_id, client_id=client_id)
        if order is None:
            raise Reject(RejectReason.NOT_FOUND, "order not found")
        if not order.status.open:
            raise Reject(RejectReason.NOT_CANCELLABLE, f"order is {order.status.value}")
        order.status = Status.CANCELLED
        order.updated_ms = wall_ms()
        self._emit("order", account, order)
        return order

    @staticmethod
    def find(account: Account, *, order_id: str | None = None, client_id: str | None = None) -> Order | None:
        if order_id:
            return account.by_id.get(str(order_id))
        if client_id:
            return account.by_client.get(client_id)
        return None

    # -- fills, positions -----------------------------------------------------------------------
    def _fill(self, account: Account, order: Order, qty: Decimal, price: Decimal, *, is_maker: bool,
              exec_type: str = "Trade") -> Fill:
        rate = self.config.maker_fee if is_maker else self.config.taker_fee
        fee = qty * price * rate
        realised = self._apply(account, order.symbol, order.sign * qty, price, fee)
        order.filled += qty
        order.cum_value += qty * price
        order.cum_fee += fee
        order.status = Status.FILLED if order.filled >= order.qty else Status.PARTIALLY_FILLED
        order.updated_ms = wall_ms()
        self._fill_seq += 1
        fill = Fill(exec_id=self._uuid(), order_id=order.order_id, client_id=order.client_id, symbol=order.symbol,
                    side=order.side, qty=qty, price=price, fee=fee, fee_rate=rate, is_maker=is_maker,
                    exec_type=exec_type, ts_ms=order.updated_ms, realised_pnl=realised, seq=self._fill_seq)
        account.fills.append(fill)
        self._trim_reduce_only(account, order.symbol, filled_by=order)
        self._income(account, order.symbol, "COMMISSION", -fee, fill.ts_ms, trade_id=fill.exec_id)
        if realised:
            self._income(account, order.symbol, "REALIZED_PNL", realised, fill.ts_ms, trade_id=fill.exec_id)
        self._emit("execution", account, fill)
        self._emit("position", account, account.position(order.symbol))
        return fill

    def _trim_reduce_only(self, account: Account, symbol: str, *, filled_by: Order) -> None:
        """As the venues do: a resting reduce-only order never exceeds the position it reduces."""
        pos = account.position(symbol)
        for order in account.open_orders(symbol):
            if not order.reduce_only or order is filled_by:
                continue
            if pos.size == 0 or (pos.size > 0) == (order.sign > 0):
                order.status = Status.CANCELLED
            elif order.leaves > abs(pos.size):
                order.qty = order.filled + abs(pos.size)
            else:
                continue
            order.updated_ms = wall_ms()
            self._emit("order", account, order)

    def _apply(self, account: Account, symbol: str, signed_qty: Decimal, price: Decimal, fee: Decimal) -> Decimal:
        """Move the position by a fill; returns realised PnL. Margin follows the isolated model."""
        pos = account.position(symbol)
        lev = account.lev(symbol)
        pos.leverage = lev
        realised = ZERO
        now = wall_ms()
        if pos.size == 0:
            pos.created_ms = now
        if pos.size != 0 and (pos.size > 0) != (signed_qty > 0):
            closing = min(abs(signed_qty), abs(pos.size))
            realised = closing * (price - pos.entry) * (1 if pos.size > 0 else -1)
            released = pos.margin * closing / abs(pos.size)
            pos.margin -= released
            pos.size += closing if pos.size < 0 else -closing
            signed_qty += -closing if signed_qty > 0 else closing
            if pos.size == 0:
                pos.entry, pos.margin = ZERO, ZERO
        if signed_qty != 0:
            new_size = pos.size + signed_qty
            pos.entry = (pos.entry * abs(pos.size) + price * abs(signed_qty)) / abs(new_size)
            pos.size = new_size
            pos.margin += abs(signed_qty) * price / lev
        pos.realised += realised
        pos.updated_ms = now
        account.balances["USDT"] = account.balances.get("USDT", ZERO) + realised - fee
        return realised

    def _income(self, account: Account, symbol: str, kind: str, amount: Decimal, ts_ms: int, *, info: str = "",
                trade_id: str = "") -> None:
        self._income_seq += 1
        account.incomes.append(Income(id=self._income_seq, symbol=symbol, type=kind, amount=amount, asset="USDT",
                                      ts_ms=ts_ms, info=info, trade_id=trade_id))

    # -- market events --------------------------------------------------------------------------
    def _on_price(self, symbol: str, quote: Quote) -> None:
        if symbol not in self.instruments:
            return
        for account in list(self.accounts.values()):
            for order in account.open_orders(symbol):
                if order.type != "limit" or order.price is None:
                    continue
                if (order.side == "buy" and quote.last <= order.price) or (
                        order.side == "sell" and quote.last >= order.price):
                    if order.reduce_only:
                        pos = account.position(symbol)
                        if pos.size == 0 or (pos.size > 0) == (order.sign > 0):
                            order.status = Status.CANCELLED
                            order.updated_ms = wall_ms()
                            self._emit("order", account, order)
                            continue
                        cap = abs(pos.size)
                    else:
                        cap = order.leaves
                    chunk = min(order.leaves, cap, self.config.maker_fill_qty or order.leaves)
                    if chunk > 0:
                        self._fill(account, order, chunk, order.price, is_maker=True)
                        self._emit("order", account, order)
            self._check_liquidation(account, symbol, quote.mark)

    def _check_liquidation(self, account: Account, symbol: str, mark: Decimal) -> None:
        pos = account.positions.get(symbol)
        if pos is None or pos.size == 0:
            return
        liq = pos.liquidation_price(self.instrument(symbol).maintenance_margin_rate)
        if liq is None or not ((pos.size < 0 and mark >= liq) or (pos.size > 0 and 0 < liq and mark <= liq)):
            return
        for order in account.open_orders(symbol):
            order.status = Status.CANCELLED
            order.updated_ms = wall_ms()
            self._emit("order", account, order)
        side = "buy" if pos.size < 0 else "sell"
        qty, lost = abs(pos.size), pos.margin
        # triggered at the liquidation price, filled at the bankruptcy price (where the margin is all gone),
        # on the tick grid on the losing side, so the fill itself accounts for the whole loss
        tick = self.instrument(symbol).tick
        bankrupt = pos.entry + lost / qty if side == "buy" else pos.entry - lost / qty
        liq = (bankrupt / tick).to_integral_value(rounding=ROUND_CEILING if side == "buy" else ROUND_FLOOR) * tick
        # Binance names its liquidation orders autoclose-...; Bybit's carry no orderLinkId
        client_id = f"autoclose-{wall_ms()}{self._order_seq}" if self.venue == "binanceusdm" else ""
        order = Order(order_id=self._next_order_id(), client_id=client_id, account=account.name,
                      symbol=symbol, side=side, type="limit", tif="IOC", price=liq, qty=qty, reduce_only=True,
                      created_ms=wall_ms(), updated_ms=wall_ms())
        self._register(account, order)
        # the venue closes at the bankruptcy side and keeps whatever margin is left: the whole margin is lost
        self._fill_seq += 1
        now = wall_ms()
        fill = Fill(exec_id=self._uuid(), order_id=order.order_id, client_id=order.client_id, symbol=symbol,
                    side=side, qty=qty, price=liq, fee=ZERO, fee_rate=ZERO, is_maker=False, exec_type="BustTrade",
                    ts_ms=now, realised_pnl=-lost, seq=self._fill_seq)
        order.filled, order.cum_value, order.status = qty, qty * liq, Status.FILLED
        pos.realised -= lost
        pos.size, pos.entry, pos.margin, pos.updated_ms = ZERO, ZERO, ZERO, now
        account.balances["USDT"] = account.balances.get("USDT", ZERO) - lost
        account.fills.append(fill)
        self._income(account, symbol, "INSURANCE_CLEAR", -lost, now, info="liquidation", trade_id=fill.exec_id)
        self.liquidations.append({"venue": self.venue, "account": account.name, "symbol": symbol, "side": side,
                                  "qty": str(qty), "price": str(liq), "margin_lost": str(lost), "ts_ms": now})
        self._emit("execution", account, fill)
        self._emit("order", account, order)
        self._emit("position", account, pos)

    def settle_funding(self, symbol: str, rate: Decimal) -> int:
        """Charge funding on every open position (longs pay when the rate is positive); returns how many."""
        quote = self.market.quote(symbol)
        quote.funding_rate = rate
        charged = 0
        for account in self.accounts.values():
            pos = account.positions.get(symbol)
            if pos is None or pos.size == 0:
                continue
            paid = pos.size * quote.mark * rate
            account.balances["USDT"] = account.balances.get("USDT", ZERO) - paid
            now = wall_ms()
            self._fill_seq += 1
            fill = Fill(exec_id=self._uuid(), order_id="", client_id="", symbol=symbol,
                        side="buy" if pos.size > 0 else "sell", qty=abs(pos.size), price=quote.mark, fee=paid,
                        fee_rate=rate, is_maker=False, exec_type="Funding", ts_ms=now, seq=self._fill_seq)
            account.fills.append(fill)
            self._income(account, symbol, "FUNDING_FEE", -paid, now, trade_id=fill.exec_id)
            self._emit("execution", account, fill)
            charged += 1
        return charged

    def set_leverage(self, account: Account, symbol: str, leverage: Decimal) -> None:
        inst = self.instrument(symbol)
        if not 1 <= leverage <= inst.max_leverage:
            raise Reject(RejectReason.BAD_QTY, f"leverage {leverage} outside [1, {inst.max_leverage}]")
        account.leverage[symbol] = leverage

    def add_margin(self, account: Account, symbol: str, amount: Decimal) -> Position:
        pos = account.positions.get(symbol)
        if pos is None or pos.size == 0:
            raise Reject(RejectReason.NOT_FOUND, "no open position to add margin to")
        if amount > account.available():
            raise Reject(RejectReason.INSUFFICIENT_BALANCE, f"{amount} exceeds available {account.available():.2f}")
        pos.margin += amount
        pos.updated_ms = wall_ms()
        self._emit("position", account, pos)
        return pos
