"""Record a workflow's history as JSON for the replay tests.

    .venv/bin/python -m tests.record_history WORKFLOW_ID [--address 127.0.0.1:7233] > tests/histories/NAME.json

Take a run from `make run` (or any server) that exercised the paths you care about; commit the file.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("workflow_id")
    parser.add_argument("--address", default="127.0.0.1:7233")
    parser.add_argument("--namespace", default="default")
    args = parser.parse_args()
    client = await Client.connect(args.address, namespace=args.namespace, data_converter=pydantic_data_converter)
    history = await client.get_workflow_handle(args.workflow_id).fetch_history()
    sys.stdout.write(history.to_json())


if __name__ == "__main__":
    asyncio.run(main())
