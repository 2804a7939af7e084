"""Faults a test or a person asks the emulators to inject, and the log of every call they answered."""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

KINDS = ("http500", "rate_limit", "timeout_after_accept", "reject", "ws_drop", "latency", "ws_silence", "down")
# Faults that act on websockets, never on a REST request. ws_silence lasts `seconds` (not a count): the public
# streams push nothing while the sockets stay open, as a stalled feed looks to a client.
WS_KINDS = ("ws_drop", "ws_silence")
# Faults that only make sense on order entry default to it; the rest hit every private call.
ORDER_ENTRY_ONLY = ("timeout_after_accept", "reject")
# The chat emulators (sim.chat) take only these; `down` is theirs alone, so the venues behave as before. A down
# lasts `seconds` when given (every send in that time is refused), else it refuses `count` sends.
CHAT_VENUES = ("slack", "telegram", "smtp")
CHAT_KINDS = ("rate_limit", "http500", "down")


def _seconds(kind: str, params: dict[str, Any]) -> float:
    try:
        seconds = float(params.get("seconds"))
    except (TypeError, ValueError):
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise ValueError(f"{kind} needs seconds, a positive number")
    return seconds


@dataclass
class Fault:
    venue: str
    kind: str
    count: int
    path: str | None = None  # substring of the request path; None: the kind's default scope
    method: str | None = None  # only requests with this HTTP method
    params: dict[str, Any] = field(default_factory=dict)
    until: float | None = None  # ws_silence, a timed down: when it ends (time.monotonic()); count is not used

    def public(self) -> dict[str, Any]:
        view = {"venue": self.venue, "kind": self.kind, "remaining": self.count, "path": self.path,
                "method": self.method, **self.params}
        if self.until is not None:
            view["remaining_s"] = round(max(0.0, self.until - time.monotonic()), 3)
        return view


class Faults:
    def __init__(self) -> None:
        self.pending: list[Fault] = []

    def add(self, venue: str, kind: str, count: int = 1, path: str | None = None, method: str | None = None,
            **params: Any) -> Fault:
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {', '.join(KINDS)}")
        if count < 1:
            raise ValueError("count must be at least 1")
        if venue in CHAT_VENUES and kind not in CHAT_KINDS:
            raise ValueError(f"{venue} takes the fault kinds {', '.join(CHAT_KINDS)}")
        if kind == "down" and venue not in CHAT_VENUES:
            raise ValueError(f"down applies to the chat services {', '.join(CHAT_VENUES)}")
        until = None
        if kind == "ws_silence" or (kind == "down" and params.get("seconds") is not None):
            params["seconds"] = _seconds(kind, params)
            until = time.monotonic() + params["seconds"]
        fault = Fault(venue=venue, kind=kind, count=count, path=path, method=method.upper() if method else None,
                      params=params, until=until)
        self.pending.append(fault)
        return fault

    def active(self) -> list[Fault]:
        """The pending faults, without silences that have run out."""
        now = time.monotonic()
        self.pending = [f for f in self.pending if f.until is None or f.until > now]
        return list(self.pending)

    def silenced(self, venue: str) -> bool:
        """Whether a ws_silence holds the venue's public pushes back right now."""
        return any(f.venue == venue and f.kind == "ws_silence" for f in self.active())

    def take(self, venue: str, path: str, *, method: str, order_entry: bool, private: bool) -> Fault | None:
        """The next fault that applies to this request, consuming one of its count (a timed one lasts)."""
        for fault in self.active():
            if fault.venue != venue or fault.kind in WS_KINDS or (fault.method and fault.method != method):
                continue
            if fault.path is not None:
                applies = fault.path in path
            elif fault.kind in ORDER_ENTRY_ONLY:
                applies = order_entry
            else:
                applies = private
            if applies:
                if fault.until is None:
                    fault.count -= 1
                    if fault.count <= 0:
                        self.pending.remove(fault)
                return fault
        return None

    def take_ws_drops(self, venue: str) -> int:
        drops = 0
        for fault in [f for f in self.pending if f.venue == venue and f.kind == "ws_drop"]:
            drops += fault.count
            self.pending.remove(fault)
        return drops

    def clear(self) -> None:
        self.pending.clear()


class CallLog:
    """Every request an emulator answered, newest last (bounded)."""

    def __init__(self, limit: int = 50_000) -> None:
        self.entries: deque[dict[str, Any]] = deque(maxlen=limit)

    def add(self, entry: dict[str, Any]) -> None:
        """Log a request as it arrives; the caller fills in the outcome on the same dict."""
        self.entries.append(entry)

    def query(self, venue: str | None = None, path: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.entries if (venue is None or e["venue"] == venue)
                and (path is None or path in e["path"])]
