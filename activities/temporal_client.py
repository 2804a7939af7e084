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


class SearchAttributesMissing(RuntimeError):
    pass


async def ensure_search_attributes(client: Client, namespace: str) -> list[str]:
    """Register any of hedgeguard's search attributes the namespace lacks; returns the names added.

    A workflow that upserts an unknown attribute fails its task every 10 s forever, so the worker refuses
    to start rather than run against a namespace it cannot fully register.
    """
    from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
    from temporalio.service import RPCError

    from models.search_attributes import ALL

    existing = (await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace))).custom_attributes
    wrong = [f"{k.name} is {existing[k.name]} not {k.indexed_value_type}" for k in ALL
             if k.name in existing and existing[k.name] != k.indexed_value_type]
    if wrong:
        raise SearchAttributesMissing("search attributes with the wrong type in namespace "
                                      f"{namespace!r}: {'; '.join(wrong)}")
    missing = {k.name: k.indexed_value_type for k in ALL if k.name not in existing}
    if missing:
        try:
            await client.operator_service.add_search_attributes(
                AddSearchAttributesRequest(namespace=namespace, search_attributes=missing))
        except RPCError as exc:
            raise SearchAttributesMissing(
                f"namespace {namespace!r} lacks search attributes {', '.join(missing)} and this worker may not add "
                f"them ({exc.message}); register them with `temporal operator search-attribute create`") from None
    return sorted(missing)
