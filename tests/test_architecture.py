"""DESIGN.md's arrows, checked: workflows -> risk, models; activities -> models, risk; only tests, bench and
the run scripts import sim/. Workflows read no clock and draw no randomness of their own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IO_LIBS = {"ccxt", "aiohttp", "sqlmodel", "sqlalchemy", "alembic", "requests", "httpx", "slack_sdk", "telegram",
           "smtplib", "socket", "subprocess", "urllib"}
FORBIDDEN = {
    "workflows": {"activities", "sim", "bench", "worker", "starter", "random", "time"} | IO_LIBS,
    "risk": {"activities", "workflows", "sim", "bench", "worker", "starter", "temporalio"} | IO_LIBS,
    "models": {"activities", "workflows", "sim", "bench", "worker", "starter"},
    "activities": {"workflows", "sim", "bench", "worker", "starter"},
}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_arrows(package: str):
    offenders = {str(p.relative_to(ROOT)): sorted(imported_roots(p) & FORBIDDEN[package]) for p in sources(package)}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_only_tests_bench_and_scripts_import_sim():
    production = [p for p in ROOT.glob("*.py")] + [p for d in ("workflows", "activities", "models", "risk")
                                                     for p in sources(d)]
    assert [str(p.relative_to(ROOT)) for p in production if "sim" in imported_roots(p)] == []


def test_workflows_use_no_wall_clock():
    calls = []
    for path in sources("workflows"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in {"now", "utcnow", "today"} and not (
                    isinstance(node.value, ast.Name) and node.value.id == "workflow"):
                calls.append(f"{path.name}:{node.lineno}")
    assert calls == []


def test_workflows_do_not_read_settings():
    """models/ is passed through the sandbox as pure code; settings read the environment, so no workflow may."""
    offenders = []
    for path in sources("workflows"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "models.settings" or isinstance(
                    node, ast.Import) and any(a.name == "models.settings" for a in node.names):
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


BOOKS = ("loan", "vault", "insurance", "lp")
# the engine: the hedge lifecycle, venues, ledger, alerts, pricing; none of it may know a book. (The feed, the store's
# loan intents and the Telegram commands still speak of loans: they are the next to move.)
ENGINE = ["workflows/hedge.py", "workflows/common.py", "workflows/alerts.py", "workflows/health.py",
          "activities/hedging.py", "activities/notify.py", "activities/alerts.py", "activities/ccxt_venue.py",
          "activities/venue.py", "activities/venues.py", "activities/health.py", "activities/temporal_client.py",
          "models/hedge.py", "models/ledger.py", "models/venue.py", "models/venue_events.py", "models/alerts.py",
          "models/search_attributes.py", "risk/pricing.py", "risk/accounting.py"]


def book_modules(path: Path) -> list[str]:
    """The book modules `path` imports (models.loan, risk.loan_x, workflows.loan_guard, ...)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
        found += [n for n in names if len(n.split(".")) > 1 and n.split(".")[1].startswith(BOOKS)]
    return found


@pytest.mark.parametrize("module", ENGINE)
def test_an_engine_module_imports_no_book_module(module: str):
    assert book_modules(ROOT / module) == []


def test_the_book_check_sees_a_book_import():
    assert book_modules(ROOT / "workflows" / "loan_guard.py")  # it imports models.loan_guard and risk.loan
