"""What the venue layer hands to workflows and books: markets, prices, orders and positions.

Symbols are the venue's own ids (BTCUSDT); sizes are base units, signed where a position is meant
(negative = short). Reject reasons are normalised across venues so callers handle one vocabulary.
"""

from __future__ import annotations

import re
from decimal import Decimal
from enum import StrEnum

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from models.venue_events import VenueFill, VenueFunding

# Bybit orderLinkId and Binance newClientOrderId both allow 36 characters of this alphabet.
CLIENT_ORDER_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,36}$")


class OrderType(StrEnum):
    LIMIT = "limit"
    MARKET = "market"


class TimeInForce(StrEnum):
    GTC = "GTC"
    IOC = "IOC"
    POST_ONLY = "POST_ONLY"


class OrderStatus(StrEnum):
    OPEN = "open"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    REJECTED = "rejected"

    @property
    def is_open(self) -> bool:
        return self in (OrderStatus.OPEN, OrderStatus.PARTIALLY_FILLED)


class RejectReason(StrEnum):
    POST_ONLY_WOULD_CROSS = "post_only_would_cross"
    INSUFFICIENT_BALANCE = "insufficient_balance"
    REDUCE_ONLY = "reduce_only"
    DUPLICATE_CLIENT_ORDER_ID = "duplicate_client_order_id"
    INVALID = "invalid"


class MarketInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    venue: str
    symbol: str
    base: str
    quote: str
    tick_size: Decimal
    qty_step: Decimal
    min_qty: Decimal
    min_notional: Decimal
    max_leverage: Decimal | None = None


class Ticker(BaseModel):
    venue: str
    symbol: str
    last: Decimal
    bid: Decimal | None
    ask: Decimal | None
    mark: Decimal | None
    index: Decimal | None
    ts: AwareDatetime

    @property
    def mid(self) -> Decimal:
        return (self.bid + self.ask) / 2 if self.bid is not None and self.ask is not None else self.last


class FundingRate(BaseModel):
    venue: str
    symbol: str
    rate: Decimal = Field(description="fraction per funding period")
    next_funding_time: AwareDatetime | None = None


class OrderRequest(BaseModel):
    model_config = ConfigDict(frozen=True)

    symbol: str
    client_order_id: str
    side: str = Field(pattern="^(buy|sell)$")
    qty: Decimal = Field(gt=0)
    type: OrderType = OrderType.LIMIT
    price: Decimal | None = Field(default=None, gt=0)
    time_in_force: TimeInForce = TimeInForce.GTC
    reduce_only: bool = False

    @field_validator("client_order_id")
    @classmethod
    def _client_id(cls, value: str) -> str:
        if not CLIENT_ORDER_ID_RE.match(value):
            raise ValueError("client order id must be 1-36 characters of A-Z a-z 0-9 _ -")
        return value

    @field_validator("price")
    @classmethod
    def _price_for_limits(cls, value: Decimal | None, info) -> Decimal | None:
        if info.data.get("type") == OrderType.LIMIT and value is None:
            raise ValueError("a limit order needs a price")
        return value


class OrderState(BaseModel):
    venue: str
    symbol: str
    client_order_id: str
    order_id: str
    side: str
    type: OrderType
    qty: Decimal
    price: Decimal | None
    filled: Decimal
    avg_price: Decimal | None
    status: OrderStatus
    reduce_only: bool
    time_in_force: TimeInForce | None = None
    reject_reason: RejectReason | None = None
    updated: AwareDatetime | None = None

    @property
    def remaining(self) -> Decimal:
        return self.qty - self.filled if self.status.is_open else Decimal(0)


class VenuePosition(BaseModel):
    venue: str
    symbol: str
    size: Decimal = Field(description="signed; negative = short")
    entry_price: Decimal | None = None
    mark_price: Decimal | None = None
    liquidation_price: Decimal | None = None
    margin: Decimal | None = None
    unrealised_pnl: Decimal | None = None
    leverage: Decimal | None = None


class AccountEvents(BaseModel):
    """Fills and funding since a cursor; pass `cursor` back to continue where this page ended."""

    fills: list[VenueFill]
    funding: list[VenueFunding]
    cursor: str | None


class SpotFill(BaseModel):
    """A spot market buy of BTC with USDT, as the venue filled it. The fee is taken from the BTC bought."""

    model_config = ConfigDict(frozen=True)

    order_id: str
    client_order_id: str
    btc_bought: Decimal = Field(description="cumExecQty: BTC bought before the fee")
    usdt_spent: Decimal = Field(description="cumExecValue: USDT paid")
    fee_btc: Decimal = Field(description="fee charged in BTC (0 if the venue took it in another coin)")
    btc_received: Decimal = Field(description="btc_bought - fee_btc: what arrived in the account")
    avg_price: Decimal | None = None
