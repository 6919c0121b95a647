"""Household pairing: the 6-digit PIN on the TV screen turns into a household token.

Reading is open on the LAN; every write needs a bearer token. The installer has the admin
token (owner-only file on the box). The household gets its own tokens by pairing: the TV menu
shows a PIN, a client sends it back with `POST /api/v1/pair` and receives a token. Tokens are
stored only as SHA-256 hashes (`<state_dir>/household_tokens.json`, 0600); the PIN is
cryptographically random, lives at most `pin_lifetime_s` and is replaced after every
successful pairing.

The PIN is shown only on screens: `GET /api/v1/pairing/pin` answers the box's own screen
(127.0.0.1) and the approved TVs at their approved addresses (the TV menu runs in the TV's own
browser, so the request comes from the TV), and `gateway pair` reads it on the box with the
admin token. Any other LAN client gets 403. Pairing is open only while a PIN is being shown:
before a screen has shown the current PIN, and after it expires, every attempt fails, so a
device on the LAN cannot guess at leisure. Each client (an IPv4 address, an IPv6 /64) has a few
attempts a minute; once wrong guesses pile up from anywhere, the clients that guessed wrong
are held back while a client that has not (the family's phone) may still pair: one device
cannot lock everyone else out.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from pydantic import BaseModel, Field, StringConstraints

from gateway.errors import GatewayError
from gateway.web import NOT_JSON, client_key, is_box_itself, require_admin

__all__ = [
    "DEFAULT_PIN_LIFETIME_S",
    "TOKENS_FILE",
    "Pairing",
    "PairingError",
    "PairingRefused",
    "PairingThrottled",
    "PinInfo",
    "TokenRecord",
    "pairing_router",
]

log = logging.getLogger(__name__)

TOKENS_FILE = "household_tokens.json"
PIN_DIGITS = 6
DEFAULT_PIN_LIFETIME_S = 600.0
DEFAULT_ATTEMPTS_PER_CLIENT = 5
DEFAULT_ATTEMPTS_TOTAL = 30
DEFAULT_ATTEMPT_WINDOW_S = 60.0
#: A household pairs a handful of TVs and phones; beyond this the oldest token is dropped.
MAX_TOKENS = 64
TOKEN_BYTES = 32
NAME_MAX_CHARS = 64
_FILE_VERSION = 1


class PairingError(GatewayError):
    """Root of pairing failures."""


class PairingRefused(PairingError):
    """The PIN was wrong, or no PIN is being shown (the caller learns nothing more)."""


class PairingThrottled(PairingError):
    """Too many attempts; try again after `retry_after_s` seconds."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"too many pairing attempts; retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class PinInfo:
    pin: str
    expires_in_s: int


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A paired client as stored: never the token itself, only its SHA-256."""

    name: str
    sha256: str
    created: str


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _new_pin() -> str:
    return f"{secrets.randbelow(10**PIN_DIGITS):0{PIN_DIGITS}d}"


class _SlidingWindow:
    """At most `limit` events per key within `window_s` (attempts refused are not counted)."""

    def __init__(self, limit: int, window_s: float) -> None:
        self._limit = limit
        self._window_s = window_s
        self._events: dict[str, deque[float]] = {}

    def retry_after(self, key: str, now: float) -> float:
        """0 when another event is allowed now, else the seconds until it is."""
        events = self._events.get(key)
        if events is None:
            return 0.0
        while events and events[0] <= now - self._window_s:
            events.popleft()
        if not events:
            del self._events[key]  # keeps the table as small as the window's traffic
            return 0.0
        if len(events) < self._limit:
            return 0.0
        return events[0] + self._window_s - now

    def record(self, key: str, now: float) -> None:
        self._events.setdefault(key, deque()).append(now)


class Pairing:
    """PIN, household tokens and the attempt limits. One per gateway.

    The constructor reads the token file (blocking: at start-up, or in a thread). `check()` is
    synchronous and constant-time, for FastAPI dependencies on every write."""

    def __init__(
        self,
        state_dir: Path,
        *,
        pin_lifetime_s: float = DEFAULT_PIN_LIFETIME_S,
        show_pin_on_screens: bool = True,
        attempts_per_client: int = DEFAULT_ATTEMPTS_PER_CLIENT,
        attempts_total: int = DEFAULT_ATTEMPTS_TOTAL,
        attempt_window_s: float = DEFAULT_ATTEMPT_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = state_dir / TOKENS_FILE
        self.show_pin_on_screens = show_pin_on_screens
        self._pin_lifetime_s = pin_lifetime_s
        self._clock = clock
        self._per_client = _SlidingWindow(attempts_per_client, attempt_window_s)
        self._failures = _SlidingWindow(attempts_total, attempt_window_s)
        self._failed = _SlidingWindow(1, attempt_window_s)  # who guessed wrong lately
        self._pin = _new_pin()
        self._pin_expires = clock() + pin_lifetime_s
        self._shown = False  # pairing is open only while the current PIN is being shown
        self._records: list[TokenRecord] = self._load()
        self._save_lock = asyncio.Lock()
        #: Wrong PINs, and attempts refused by the limits (for diagnostics).
        self.refused = 0
        self.throttled = 0

    # -- the PIN --------------------------------------------------------------------------

    def _current_pin(self) -> str:
        if self._clock() >= self._pin_expires:
            self.rotate_pin()
        return self._pin

    def rotate_pin(self) -> None:
        """Replace the PIN now (after a pairing, and when it has lived its time); pairing is
        closed until the new one is shown."""
        self._pin = _new_pin()
        self._pin_expires = self._clock() + self._pin_lifetime_s
        self._shown = False
        log.debug("pairing PIN rotated")

    def pin_info(self) -> PinInfo:
        """The PIN, for a screen to show: showing it opens pairing until it expires."""
        pin = self._current_pin()
        self._shown = True
        return PinInfo(pin, max(1, math.ceil(self._pin_expires - self._clock())))

    # -- pairing --------------------------------------------------------------------------

    async def pair(self, pin: str, name: str, *, client: str) -> str:
        """Exchange the PIN for a new household token named `name` (replacing one of the
        same name). PairingThrottled, PairingRefused."""
        now = self._clock()
        wait_s = self._per_client.retry_after(client, now)
        if self._failures.retry_after("*", now) > 0:
            # Many wrong guesses lately: those who made them wait, everyone else may still try.
            wait_s = max(wait_s, self._failed.retry_after(client, now))
        if wait_s > 0:
            self.throttled += 1
            raise PairingThrottled(max(1, math.ceil(wait_s)))
        self._per_client.record(client, now)
        current = self._current_pin()
        if not (hmac.compare_digest(pin.encode(), current.encode()) and self._shown):
            self.refused += 1
            self._failures.record("*", now)
            self._failed.record(client, now)
            log.warning("pairing: wrong PIN from %s", client)  # at most the attempt limit per minute
            raise PairingRefused("wrong PIN")
        # The PIN is spent before anything awaits: a second request cannot reuse it.
        self.rotate_pin()
        token = secrets.token_urlsafe(TOKEN_BYTES)
        created = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        before = self._records
        records = [r for r in before if r.name != name]
        records.append(TokenRecord(name=name, sha256=_hash(token), created=created))
        dropped = records[:-MAX_TOKENS]
        self._records = records[-MAX_TOKENS:]
        for old in dropped:
            log.warning("pairing: too many household tokens; dropped the oldest (%s)", old.name)
        try:
            await self._save()
        except PairingError:
            self._records = before  # a token that is not on disk is never handed out
            raise
        log.info("pairing: %s paired from %s", name, client)
        return token

    def check(self, token: str) -> bool:
        """Whether `token` is a valid household token (constant-time in the token)."""
        return self.name_of(token) is not None

    def name_of(self, token: str) -> str | None:
        """The name the token was paired under, or None."""
        digest = _hash(token)
        found: str | None = None
        for record in self._records:  # no early exit: every stored hash is compared
            if hmac.compare_digest(digest, record.sha256):
                found = record.name
        return found

    def tokens(self) -> list[TokenRecord]:
        return list(self._records)

    async def revoke(self, name: str) -> bool:
        """Forget the token paired under `name`; False if there is none."""
        kept = [r for r in self._records if r.name != name]
        if len(kept) == len(self._records):
            return False
        self._records = kept
        await self._save()
        log.info("pairing: token %s revoked", name)
        return True

    # -- storage --------------------------------------------------------------------------

    def _load(self) -> list[TokenRecord]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise PairingError(f"cannot read {self.path}: {exc.strerror}") from exc
        if self.path.stat().st_mode & 0o077:
            log.warning("%s was readable by others; making it owner-only", self.path)
            self.path.chmod(0o600)
        try:
            data = json.loads(raw)
            return [TokenRecord(**item) for item in data["tokens"]][-MAX_TOKENS:]
        except (ValueError, KeyError, TypeError) as exc:
            # Fail closed: nobody is paired until the household pairs again.
            log.error("%s is damaged (%s); household clients must pair again", self.path, exc)
            return []

    async def _save(self) -> None:
        data = {
            "version": _FILE_VERSION,
            "tokens": [{"name": r.name, "sha256": r.sha256, "created": r.created} for r in self._records],
        }
        text = json.dumps(data, ensure_ascii=False, indent=1) + "\n"
        async with self._save_lock:
            try:
                await asyncio.to_thread(_write_private, self.path, text)
            except OSError as exc:
                log.error("cannot write %s: %s", self.path, exc.strerror)
                raise PairingError(f"cannot write {self.path}: {exc.strerror}") from exc


def _write_private(path: Path, text: str) -> None:
    """Atomically replace `path` with `text`, owner-only, durable."""
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


# -- HTTP ---------------------------------------------------------------------------------


def _unauthorized() -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})


class PairRequest(BaseModel):
    pin: str = Field(pattern=rf"^[0-9]{{{PIN_DIGITS}}}$", description="the PIN shown on the TV")
    name: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=NAME_MAX_CHARS)
    ] = Field(description="what this client is called (pairing again under a name replaces its token)")


class PairResult(BaseModel):
    token: str = Field(description="a household bearer token; keep it secret")


class PinView(BaseModel):
    pin: str
    expires_in_s: int


class HouseholdToken(BaseModel):
    name: str
    created: str


class _Detail(BaseModel):
    detail: str


def pairing_router(
    pairing: Pairing,
    *,
    is_screen: Callable[[str], bool] = is_box_itself,
    refused: Counter[str] | None = None,
) -> APIRouter:
    """`/api/v1/pair...` and `/api/v1/pairing...`. `is_screen(client address)`: may this client
    show the PIN (the box's own screen, an approved TV). Refusals are counted by reason in
    `refused` (the LAN guard's counter, on the admin health view)."""
    r = APIRouter(prefix="/api/v1", tags=["pairing"])
    counted: Counter[str] = refused if refused is not None else Counter()

    @r.post(
        "/pair",
        responses={
            **NOT_JSON,
            401: {"model": _Detail, "description": "wrong PIN"},
            429: {"model": _Detail, "description": "too many attempts (see Retry-After)"},
        },
    )
    async def pair(body: PairRequest, request: Request) -> PairResult:
        """Exchange the PIN shown on the TV for a household token."""
        client = client_key(request.client.host) if request.client else "?"
        try:
            token = await pairing.pair(body.pin, body.name, client=client)
        except PairingThrottled as exc:
            counted["pairing_throttled"] += 1
            raise HTTPException(
                status.HTTP_429_TOO_MANY_REQUESTS, headers={"Retry-After": str(exc.retry_after_s)}
            ) from exc
        except PairingRefused as exc:
            counted["wrong_pin"] += 1
            raise _unauthorized() from exc
        return PairResult(token=token)

    @r.get("/pairing", dependencies=[Depends(require_admin)], responses={401: {"model": _Detail}})
    async def pairing_pin_admin() -> PinView:
        """The current PIN, for `gateway pair` on the box (admin token)."""
        info = pairing.pin_info()
        return PinView(pin=info.pin, expires_in_s=info.expires_in_s)

    @r.get(
        "/pairing/pin",
        responses={
            403: {
                "model": _Detail,
                "description": "not a screen (only the box itself and approved TVs show the PIN), "
                "or showing it on screens is turned off",
            }
        },
    )
    async def pairing_pin_lan(request: Request, response: Response) -> PinView:
        """The current PIN for the TV menu's settings screen, on the box's own screen and on
        approved TVs only."""
        client = request.client.host if request.client else ""
        if not (pairing.show_pin_on_screens and is_screen(client)):
            counted["pin_not_a_screen"] += 1
            raise HTTPException(status.HTTP_403_FORBIDDEN)
        response.headers["Cache-Control"] = "no-store"
        info = pairing.pin_info()
        return PinView(pin=info.pin, expires_in_s=info.expires_in_s)

    @r.get("/pair/tokens", dependencies=[Depends(require_admin)], responses={401: {"model": _Detail}})
    async def tokens() -> list[HouseholdToken]:
        """Paired household clients (names and when they paired; never the tokens)."""
        return [HouseholdToken(name=t.name, created=t.created) for t in pairing.tokens()]

    @r.delete(
        "/pair/tokens/{name}",
        dependencies=[Depends(require_admin)],
        status_code=204,
        responses={401: {"model": _Detail}, 404: {"model": _Detail}},
    )
    async def revoke(name: str) -> None:
        """Revoke the household token paired under `name`."""
        if not await pairing.revoke(name):
            raise HTTPException(status.HTTP_404_NOT_FOUND)

    return r
