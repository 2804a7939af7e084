"""What a venue tells us happened to an account: fills and funding settlements.

`identity` is the venue's own name for the event; the ledger's `input_hash` is derived from it, so the
same fill seen over REST, websocket and a reconciliation pass is stored once.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


def input_hash(identity: str) -> str:
    return hashlib.sha256(identity.encode()).hexdigest()


class VenueFill(BaseModel):
    model_config = ConfigDict(frozen=True)

    venue: str
    account: str
    symbol: str
    fill_id: str = Field(min_length=1, description="the venue's execution/trade id")
    order_id: str | None = None
    client_order_id: str | None = None
    side: Literal["buy", "sell"]
    qty: Decimal = Field(gt=0)
    price: Decimal = Field(gt=0)
    fee: Decimal = Decimal(0)
    fee_asset: str = "USDT"
    liquidation: bool = False
    ts: AwareDatetime
    payload: dict[str, Any] = Field(default_factory=dict)

    @property
    def signed_qty(self) -> Decimal:
        return self.qty if self.side == "buy" else -self.qty

    @property
    def identity(self) -> str:
        return f"{self.venue}:{self.account}:fill:{self.symbol}:{self.fill_id}"  # Binance trade ids are per symbol


class VenueFunding(BaseModel):
    model_config = ConfigDict(frozen=True)

    venue: str
    account: str
    symbol: str
    amount: Decimal = Field(description="positive = received, negative = paid")
    rate: Decimal | None = None
    ts: AwareDatetime = Field(description="settlement time")
    funding_id: str | None = Field(default=None, description="the venue's id, where it gives one")
    payload: dict[str, Any] = Field(default_factory=dict)

    @property
    def identity(self) -> str:
        key = self.funding_id or str(int(self.ts.timestamp() * 1000))
        return f"{self.venue}:{self.account}:funding:{self.symbol}:{key}"


VenueEvent = VenueFill | VenueFunding
