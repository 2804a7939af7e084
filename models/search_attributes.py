"""Custom search attributes operators filter by in the Temporal UI (e.g. `HedgeStatus="OPEN" AND Venue="bybit"`).

Registered with the dev server by `make run` and the test fixtures from this one list, so a workflow can
never upsert an attribute the server does not know (that would fail its tasks every 10 s forever).
"""

from temporalio.common import SearchAttributeKey

BOOK = SearchAttributeKey.for_keyword("Book")
EXPOSURE_ID = SearchAttributeKey.for_keyword("ExposureId")
VENUE = SearchAttributeKey.for_keyword("Venue")
SYMBOL = SearchAttributeKey.for_keyword("Symbol")
HEDGE_STATUS = SearchAttributeKey.for_keyword("HedgeStatus")
RISK_STATE = SearchAttributeKey.for_keyword("RiskState")
LOAN_ID = SearchAttributeKey.for_keyword("LoanId")
LTV_PCT = SearchAttributeKey.for_float("LtvPct")
PAUSED = SearchAttributeKey.for_bool("Paused")

ALL: tuple[SearchAttributeKey, ...] = (BOOK, EXPOSURE_ID, VENUE, SYMBOL, HEDGE_STATUS, RISK_STATE, LOAN_ID, LTV_PCT,
                                       PAUSED)

_CLI_TYPE = {"KEYWORD": "Keyword", "DOUBLE": "Double", "BOOL": "Bool", "INT": "Int", "TEXT": "Text",
             "DATETIME": "Datetime"}


def dev_server_flags() -> list[str]:
    """`--search-attribute Name=Type` arguments for `temporal server start-dev`."""
    flags: list[str] = []
    for key in ALL:
        kind = _CLI_TYPE[key.indexed_value_type.name.removeprefix("INDEXED_VALUE_TYPE_")]
        flags += ["--search-attribute", f"{key.name}={kind}"]
    return flags
