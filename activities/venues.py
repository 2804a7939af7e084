"""Where venue clients come from: one ccxt client per (venue, account) per worker process.

The clients of one venue share what is the same for every account: ccxt's API description and the markets
(taken from the venue's first client), and one HTTP connection pool. What is left per account is its keys and
ccxt's per-instance state (bench/README.md, "Scale").

Paper mode needs no keys from anyone: an account name is turned into a deterministic key pair, and the
account is created on the simulated venue (with `paper_balance_usdt`) the first time it is used. Live mode
reads the keys from the environment or the secrets file, keeps ccxt's rate limiter on, and talks to the
real hosts.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl

import aiohttp
import certifi
from pydantic import SecretStr

from activities.ccxt_venue import BinanceUsdmVenue, BybitVenue, CcxtVenue, SharedDescription
from activities.venue import VenueError, VenueUnavailable
from models.settings import Credentials, Settings

BUILDERS = {"bybit": BybitVenue, "binanceusdm": BinanceUsdmVenue}
CONNECTIONS = 100  # open at once to all venues together (aiohttp's default); more requests wait for one


def paper_credentials(venue: str, account: str) -> Credentials:
    """The simulated venue's key pair for a paper account: derived from its name, so nobody types one."""
    digest = hashlib.sha256(f"hedgeguard-paper:{venue}:{account}".encode()).hexdigest()
    return Credentials(api_key=SecretStr(f"paper-{venue}-{account}"[:64]), api_secret=SecretStr(digest))


async def ensure_paper_account(settings: Settings, venue: str, account: str) -> bool:
    """Create the paper account on the simulator if it is not there yet; True when it was created."""
    creds = paper_credentials(venue, account)
    body = {"venue": venue, "name": account, "api_key": creds.api_key.get_secret_value(),
            "secret": creds.api_secret.get_secret_value(), "balances": {"USDT": str(settings.paper_balance_usdt)}}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            async with http.post(f"{settings.paper_control_url}/control/accounts", json=body) as resp:
                data = await resp.json()
                if resp.status >= 400:
                    raise VenueError(venue, f"the simulator refused paper account {account}: {data.get('error')}")
                return bool(data.get("created"))
    except aiohttp.ClientError as exc:
        raise VenueUnavailable(venue, f"simulator control API at {settings.paper_control_url} unreachable ({exc}); "
                                      "is `python -m sim` running?") from None


class VenuePool:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._venues: dict[tuple[str, str], CcxtVenue] = {}
        self._lock = asyncio.Lock()
        self._ssl: ssl.SSLContext | None = None
        self._http: aiohttp.ClientSession | None = None
        self._first: dict[str, tuple[CcxtVenue, SharedDescription]] = {}  # per venue: its first client

    async def get(self, venue: str, account: str) -> CcxtVenue:
        key = (venue, account)
        if key in self._venues:
            return self._venues[key]
        async with self._lock:
            if key not in self._venues:
                self._venues[key] = await self._open(venue, account)
        return self._venues[key]

    async def _open(self, venue: str, account: str) -> CcxtVenue:
        builder = BUILDERS.get(venue)
        if builder is None:
            raise VenueError(venue, f"unsupported venue; hedgeguard trades {', '.join(BUILDERS)}")
        if self.settings.mode == "paper":
            await ensure_paper_account(self.settings, venue, account)
            client = builder.build(account, paper_credentials(venue, account), base_url=self.settings.paper_url(venue),
                                   rate_limit=False, timeout_ms=self.settings.venue_timeout_ms, session=self._session())
        else:
            if account not in self.settings.accounts.get(venue, []):
                raise VenueError(venue, f"account {account!r} is not in HEDGEGUARD_ACCOUNTS")
            client = builder.build(account, self.settings.credentials(venue, account), base_url=None, rate_limit=True,
                                   timeout_ms=self.settings.venue_timeout_ms, session=self._session())
        client.ex.ssl_context = self._tls()  # ccxt would load the CA bundle again for every client
        if venue not in self._first:
            self._first[venue] = (client, SharedDescription(client.ex))  # taken before it sends anything
        else:
            first, description = self._first[venue]
            description.adopt(client.ex)
            client.markets_from = first
        return client

    def _session(self) -> aiohttp.ClientSession:
        """One connection pool for every client: a pool per account held ten thousand idle connections to one
        host. No cookies are kept (none of the APIs needs one, and accounts must not share them)."""
        if self._http is None:
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._tls(), limit=CONNECTIONS),
                                               cookie_jar=aiohttp.DummyCookieJar())
        return self._http

    def _tls(self) -> ssl.SSLContext:
        """One TLS context for every client: the same CA bundle ccxt uses (certifi), loaded once, not per account
        (it was the largest part of a client)."""
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=certifi.where())
        return self._ssl

    async def close(self) -> None:
        # together: ccxt waits a quarter of a second in each client's close
        await asyncio.gather(*(venue.close() for venue in self._venues.values()), return_exceptions=True)
        self._venues.clear()
        self._first.clear()
        if self._http is not None:
            await self._http.close()
            self._http = None
