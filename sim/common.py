"""What the venue emulators share: JSON with Decimals as strings, HMAC, request bookkeeping."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from aiohttp import web

from sim.engine import Engine
from sim.faults import CallLog, Faults
from sim.loans import LoanBook
from sim.market import Market

ACCOUNT = web.RequestKey("account", object)
PARAMS = web.RequestKey("params", dict)
BODY = web.RequestKey("body", dict)


SEVEN_DAYS_MS = 7 * 24 * 3600 * 1000


def seven_day_window(params: dict[str, Any], too_long: Exception, now_ms: int) -> tuple[int, int]:
    """Both venues' rule for fill and income history: a range of at most 7 days (else `too_long` is raised),
    the last 7 days by default, the 7 days from a lone startTime or up to a lone endTime."""
    start = int(params["startTime"]) if params.get("startTime") else None
    end = int(params["endTime"]) if params.get("endTime") else None
    if start is not None and end is not None:
        if end - start > SEVEN_DAYS_MS:
            raise too_long
        return start, end
    if start is not None:
        return start, start + SEVEN_DAYS_MS
    end = end if end is not None else now_ms
    return end - SEVEN_DAYS_MS, end


def num(value: Decimal | None, places: int | None = None) -> str:
    """A venue number as the venues send them: a plain decimal string, no exponent."""
    if value is None:
        return ""
    if places is not None:
        value = value.quantize(Decimal(1).scaleb(-places))
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return num(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def dumps(data: Any) -> str:
    return json.dumps(data, default=_default, separators=(",", ":"))


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=dumps(data), status=status, content_type="application/json", headers=headers)


def hmac_hex(secret: str, payload: str) -> str:
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


@dataclass
class VenueContext:
    """Everything a venue app needs from the simulator."""

    venue: str
    market: Market
    engine: Engine
    faults: Faults
    calls: CallLog
    loans: LoanBook | None = None
    hold_timeout_s: float = 15.0  # how long a timeout_after_accept holds the answer


async def hold(ctx: VenueContext, fault_params: dict[str, Any]) -> None:
    """A timeout after the venue accepted: keep the client waiting longer than it waits."""
    await asyncio.sleep(float(fault_params.get("hold_s", ctx.hold_timeout_s)))
