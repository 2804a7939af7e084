"""The one interface every venue implements, and the errors it raises.

Errors are classified by the venue's own code (retCode / code), never by ccxt's exception class, whose
choice depends on the URL the client talks to. `retryable` tells the activity layer what to do.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Protocol

from models.venue import (
    AccountEvents,
    FundingRate,
    MarketInfo,
    OrderRequest,
    OrderState,
    RejectReason,
    Ticker,
    VenuePosition,
)
from models.venue_events import VenueFill


class VenueError(Exception):
    retryable = False

    def __init__(self, venue: str, message: str, *, code: int | str | None = None) -> None:
        super().__init__(f"{venue}: {message}" + (f" (code {code})" if code is not None else ""))
        self.venue, self.code, self.detail = venue, code, message


class VenueAuthError(VenueError):
    """Bad key, bad signature, missing permission: a person has to fix it."""


class VenueClockSkew(VenueError):
    """Request timestamp outside the venue's receive window; retry after resynchronising time."""

    retryable = True


class VenueRateLimited(VenueError):
    retryable = True

    def __init__(self, venue: str, message: str, *, code: int | str | None = None, retry_after_s: float | None = None):
        super().__init__(venue, message, code=code)
        self.retry_after_s = retry_after_s


class VenueUnavailable(VenueError):
    """5xx, timeout, connection reset: the request may or may not have been applied."""

    retryable = True


class OrderNotFound(VenueError):
    pass


class OrderRejected(VenueError):
    def __init__(self, venue: str, message: str, *, reason: RejectReason, code: int | str | None = None,
                 order: OrderState | None = None) -> None:
        super().__init__(venue, message, code=code)
        self.reason = reason
        self.order = order


class Venue(Protocol):
    name: str
    account: str

    async def markets(self) -> dict[str, MarketInfo]: ...
    async def ticker(self, symbol: str) -> Ticker: ...
    async def funding_rate(self, symbol: str) -> FundingRate: ...
    async def place_order(self, request: OrderRequest, *, looked_up: bool = False) -> OrderState: ...
    async def cancel_order(self, symbol: str, client_order_id: str) -> OrderState | None: ...
    async def order_by_client_id(self, symbol: str, client_order_id: str) -> OrderState | None: ...
    async def open_orders(self, symbol: str) -> list[OrderState]: ...
    async def set_leverage(self, symbol: str, leverage: Decimal) -> None: ...
    async def position(self, symbol: str) -> VenuePosition: ...
    async def events_since(self, symbol: str, cursor: str | None, *, since_ms: int | None = None,
                           until: datetime | None = None) -> AccountEvents: ...
    async def fills_for_order(self, symbol: str, client_order_id: str) -> list[VenueFill]: ...
    async def close(self) -> None: ...
