"""One way to connect to Temporal, shared by the worker, the CLI and the tests.

Every client uses the pydantic data converter: the default JSON converter cannot carry Decimal.
"""

from __future__ import annotations

import asyncio
import time

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from models.settings import Settings


class TemporalUnreachable(ConnectionError):
    pass


def metrics_runtime(bind: str) -> Runtime:
    return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=bind)))


async def connect(settings: Settings, *, runtime: Runtime | None = None, wait_s: float = 0) -> Client:
    """Connect, retrying for up to `wait_s` seconds (the dev server may still be starting)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace,
                                        data_converter=pydantic_data_converter, runtime=runtime)
        except RuntimeError as exc:
            if time.monotonic() >= deadline:
                reason = "connection refused" if "refused" in str(exc) else str(exc).splitlines()[0][:120]
                raise TemporalUnreachable(
                    f"cannot reach Temporal at {settings.temporal_address} (HEDGEGUARD_TEMPORAL_ADDRESS): "
                    f"{reason}. Is it running? `make run` starts one.") from None
            await asyncio.sleep(0.5)
