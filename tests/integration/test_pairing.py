"""The LAN HTTP server's household side over real HTTP (uvicorn on loopback): pairing (PIN,
tokens, limits, storage) and the guard in front of every route (Host, Origin, body size,
streams and requests per client)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.bus import Bus
from gateway.hub import Hub
from gateway.registry import Registry
from gateway.services.pairing import TOKENS_FILE, Pairing, PairingRefused, pairing_router
from gateway.services.tvmenu import tvmenu_router
from gateway.web import WebContext, bind, create_app, serve

UNAUTHORIZED = {"detail": "Unauthorized"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class OneAlert:
    """An AlertsView holding one active alert."""

    def __init__(self) -> None:
        self.acks: list[tuple[str, str]] = []

    def active(self) -> list[dict[str, Any]]:
        return [{"id": "a1", "level": 2, "headline": "暴雪橙色预警", "state": "active"}]

    def history(self, limit: int) -> list[dict[str, Any]]:
        return []

    async def acknowledge(self, alert_id: str, source: str) -> bool:
        if alert_id != "a1":
            return False
        self.acks.append((alert_id, source))
        return True


@dataclass
class Api:
    client: httpx.AsyncClient
    url: str
    pairing: Pairing
    clock: FakeClock
    admin: str
    state_dir: Path
    alerts: OneAlert

    def as_admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin}"}

    async def pair(self, pin: str | None = None, name: str = "客厅电视菜单", **kw: Any) -> httpx.Response:
        return await self.client.post(
            "/api/v1/pair", json={"pin": pin or self.pairing.pin_info().pin, "name": name}, **kw
        )


@asynccontextmanager
async def running(
    state_dir: Path, menu_options: dict[str, Any] | None = None, **pairing_options: Any
) -> AsyncIterator[Api]:
    """The gateway's HTTP app with the pairing and TV-menu routers, served on loopback."""
    state_dir.mkdir(parents=True, exist_ok=True)
    clock = FakeClock()
    admin = secrets.token_urlsafe(32)
    alerts = OneAlert()
    sock = bind("127.0.0.1", 0)
    try:
        async with Registry(state_dir) as registry, asyncio.TaskGroup() as tg:
            pairing = Pairing(state_dir, clock=clock, **pairing_options)
            ctx = WebContext(
                Hub(registry, Bus()), gateway_id="p1", admin_token=admin, household=pairing.name_of
            )
            menu = tvmenu_router(ctx, alerts, **(menu_options or {}))
            app = create_app(ctx, routers=(menu, pairing_router(pairing, is_screen=ctx.is_screen)))
            ready = asyncio.Event()
            server = tg.create_task(serve(app, sock, ready=ready), name="http")
            async with asyncio.timeout(5):
                await ready.wait()
            url = f"http://127.0.0.1:{sock.getsockname()[1]}"
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                yield Api(client, url, pairing, clock, admin, state_dir, alerts)
            server.cancel()
    finally:
        sock.close()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with running(tmp_path / "state") as a:
        yield a


async def test_pairing_with_the_pin_gives_a_household_token_that_writes(api: Api) -> None:
    r = await api.pair()
    assert r.status_code == 200
    token = r.json()["token"]
    assert len(token) >= 43 and api.pairing.check(token)
    r = await api.client.post("/api/v1/alerts/a1/ack", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 204
    assert api.alerts.acks == [("a1", "tvmenu:客厅电视菜单")]
    # The admin token writes too.
    r = await api.client.post("/api/v1/alerts/a1/ack", headers=api.as_admin())
    assert r.status_code == 204 and api.alerts.acks[-1] == ("a1", "tvmenu:admin")
    r = await api.client.post("/api/v1/alerts/nope/ack", headers=api.as_admin())
    assert r.status_code == 404


async def test_wrong_or_missing_tokens_get_401_and_nothing_else(api: Api) -> None:
    household = (await api.pair()).json()["token"]
    bad = [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer nope"},
        {"Authorization": f"Bearer {household}x"},
        {"Authorization": f"Basic {household}"},
        {"Authorization": f"Bearer {api.admin[:-1]}"},
    ]
    for headers in bad:
        r = await api.client.post("/api/v1/alerts/a1/ack", headers=headers)
        assert (r.status_code, r.json()) == (401, UNAUTHORIZED), headers
        assert r.headers["www-authenticate"] == "Bearer"
    # The installer's endpoints take the admin token only: a household token is not enough.
    for headers in [*bad, {"Authorization": f"Bearer {household}"}]:
        for method, path in (
            ("GET", "/api/v1/pairing"),
            ("GET", "/api/v1/pair/tokens"),
            ("DELETE", "/api/v1/pair/tokens/客厅电视菜单"),
        ):
            r = await api.client.request(method, path, headers=headers)
            assert (r.status_code, r.json()) == (401, UNAUTHORIZED), (method, path, headers)
    # A wrong PIN says no more than that.
    wrong = f"{(int(api.pairing.pin_info().pin) + 1) % 1_000_000:06d}"
    r = await api.pair(wrong)
    assert (r.status_code, r.json()) == (401, UNAUTHORIZED)
    assert api.alerts.acks == []


def from_address(api: Api, address: str) -> httpx.AsyncClient:
    """A client at another address of the (simulated) home network: not the box's own screen."""
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(base_url=api.url, transport=transport, timeout=10)


async def test_pairing_attempts_are_limited_per_client_and_nobody_locks_out_the_family(api: Api) -> None:
    pin = api.pairing.pin_info().pin
    wrong = f"{(int(pin) + 1) % 1_000_000:06d}"
    for _ in range(5):
        assert (await api.pair(wrong)).status_code == 401
    r = await api.pair(wrong)
    assert r.status_code == 429
    assert 1 <= int(r.headers["retry-after"]) <= 60
    # While limited, even the right PIN is not tried (and so not spent).
    r = await api.pair(pin)
    assert r.status_code == 429 and "token" not in r.text
    assert api.pairing.pin_info().pin == pin

    # Other addresses have their own five; after 30 wrong guesses in all, those who guessed wrong
    # wait, but a client that did not (the family's phone) still pairs.
    for n in range(2, 7):
        async with from_address(api, f"127.0.0.{n}") as other:
            for _ in range(5):
                r = await other.post("/api/v1/pair", json={"pin": wrong, "name": "x"})
                assert r.status_code == 401
            r = await other.post("/api/v1/pair", json={"pin": pin, "name": "x"})
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    async with from_address(api, "127.0.0.7") as phone:
        r = await phone.post("/api/v1/pair", json={"pin": pin, "name": "妈妈的手机"})
        assert r.status_code == 200 and api.pairing.check(r.json()["token"])

    # A minute later the first client may try again.
    api.clock.now += 61
    assert (await api.pair()).status_code == 200


async def test_pairing_is_open_only_while_a_pin_is_shown(tmp_path: Path) -> None:
    pairing = Pairing(tmp_path)
    # Nobody has shown the PIN yet: even the right one does not pair.
    with pytest.raises(PairingRefused):
        await pairing.pair(pairing._pin, "guess", client="c")
    shown = pairing.pin_info().pin
    assert await pairing.pair(shown, "电视菜单", client="c")
    # Spent: the next PIN is closed again until a screen shows it.
    with pytest.raises(PairingRefused):
        await pairing.pair(pairing._pin, "again", client="d")


async def test_the_pin_is_shown_only_on_screens(api: Api) -> None:
    async with from_address(api, "127.0.0.9") as lan_client:
        r = await lan_client.get("/api/v1/pairing/pin")
        assert r.status_code == 403 and api.pairing.pin_info().pin not in r.text
    r = await api.client.get("/api/v1/pairing/pin")  # the box's own screen (127.0.0.1)
    assert r.status_code == 200 and r.json()["pin"] == api.pairing.pin_info().pin


async def test_the_pin_rotates_after_pairing_and_every_ten_minutes(api: Api) -> None:
    first = (await api.client.get("/api/v1/pairing/pin")).json()
    assert first["pin"].isdigit() and len(first["pin"]) == 6
    assert first["expires_in_s"] == 600
    assert (await api.client.get("/api/v1/pairing", headers=api.as_admin())).json() == first
    assert (await api.client.get("/api/v1/pairing/pin")).headers["cache-control"] == "no-store"

    api.clock.now += 599
    assert (await api.client.get("/api/v1/pairing/pin")).json() == {**first, "expires_in_s": 1}
    api.clock.now += 1
    second = (await api.client.get("/api/v1/pairing/pin")).json()
    assert second["expires_in_s"] == 600
    # 1 in 10^6 that a fresh PIN repeats the old one; a repeat must still be a new PIN period.
    assert (await api.pair(first["pin"])).status_code == (200 if second["pin"] == first["pin"] else 401)

    api.clock.now += 600
    current = api.pairing.pin_info().pin
    assert (await api.pair(current, name="书房平板")).status_code == 200
    after = api.pairing.pin_info()
    assert after.expires_in_s == 600
    if after.pin != current:  # spent: the same PIN never pairs twice
        assert (await api.pair(current, name="别的设备")).status_code == 401


async def test_the_pin_is_on_no_screen_when_turned_off(tmp_path: Path) -> None:
    async with running(tmp_path / "state", show_pin_on_screens=False) as api:
        r = await api.client.get("/api/v1/pairing/pin")
        assert r.status_code == 403 and api.pairing.pin_info().pin not in r.text
        r = await api.client.get("/api/v1/pairing", headers=api.as_admin())
        assert r.json()["pin"] == api.pairing.pin_info().pin
        assert (await api.client.get("/api/v1/settings")).status_code == 200


async def test_tokens_are_stored_hashed_owner_only_and_can_be_revoked(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with running(state) as api:
        tv = (await api.pair(name="客厅电视菜单")).json()["token"]
        pad = (await api.pair(name="书房平板")).json()["token"]
        path = state / TOKENS_FILE
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        text = path.read_text()
        assert tv not in text and pad not in text
        stored = json.loads(text)["tokens"]
        assert [t["name"] for t in stored] == ["客厅电视菜单", "书房平板"]
        assert stored[0]["sha256"] == hashlib.sha256(tv.encode()).hexdigest()
        listed = (await api.client.get("/api/v1/pair/tokens", headers=api.as_admin())).json()
        assert [t["name"] for t in listed] == ["客厅电视菜单", "书房平板"] and "sha256" not in str(listed)

        # Pairing again under a name replaces that name's token.
        tv2 = (await api.pair(name="客厅电视菜单")).json()["token"]
        assert api.pairing.check(tv2) and not api.pairing.check(tv)

        r = await api.client.delete("/api/v1/pair/tokens/书房平板", headers=api.as_admin())
        assert r.status_code == 204
        assert not api.pairing.check(pad)
        r = await api.client.post("/api/v1/alerts/a1/ack", headers={"Authorization": f"Bearer {pad}"})
        assert r.status_code == 401
        r = await api.client.delete("/api/v1/pair/tokens/书房平板", headers=api.as_admin())
        assert (r.status_code, r.json()) == (404, {"detail": "Not Found"})

    # A restart keeps what was paired (and only that).
    reloaded = Pairing(state)
    assert reloaded.check(tv2) and not reloaded.check(pad) and not reloaded.check(tv)
    assert not reloaded.check("")


async def test_a_damaged_or_loose_token_file_fails_closed(tmp_path: Path) -> None:
    pairing = Pairing(tmp_path)
    token = await pairing.pair(pairing.pin_info().pin, "电视菜单", client="t")
    path = tmp_path / TOKENS_FILE
    path.chmod(0o644)
    assert Pairing(tmp_path).check(token)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # tightened on load
    path.write_text("{not json")
    assert not Pairing(tmp_path).check(token)


async def test_a_malformed_pairing_request_is_refused_before_any_attempt(api: Api) -> None:
    for body in (
        {"pin": "12345", "name": "x"},
        {"pin": "abcdef", "name": "x"},
        {"pin": "123456", "name": " "},
    ):
        assert (await api.client.post("/api/v1/pair", json=body)).status_code == 422
    # None of that counted against the limit.
    for _ in range(4):
        assert (await api.pair(f"{(int(api.pairing.pin_info().pin) + 1) % 1_000_000:06d}")).status_code == 401
    assert (await api.pair()).status_code == 200


# -- the guard in front of every route ------------------------------------------------------


async def test_a_request_must_name_the_box_in_host(api: Api) -> None:
    """DNS rebinding: a web page whose own name now points at the box still sends that name."""
    evil = {"Host": "evil.example:8080", "Origin": "http://evil.example:8080"}
    refused = api.pairing.refused
    r = await api.client.post("/api/v1/pair", json={"pin": "000000", "name": "evil"}, headers=evil)
    assert r.status_code == 421 and r.json()["detail"]["reason"] == "wrong_host"
    assert api.pairing.refused == refused  # not even an attempt
    assert (await api.client.get("/api/v1/devices", headers={"Host": "evil.example"})).status_code == 421
    for host in ("127.0.0.1", "LOCALHOST:80", "[::1]:8080"):
        assert (await api.client.get("/api/v1/devices", headers={"Host": host})).status_code == 200, host


async def test_writes_from_another_origin_are_refused(api: Api) -> None:
    port = api.url.rsplit(":", 1)[1]
    body = {"pin": api.pairing.pin_info().pin, "name": "x"}
    for origin in ("http://evil.example", f"http://127.0.0.1:{int(port) + 1}", "null"):
        r = await api.client.post("/api/v1/pair", json=body, headers={"Origin": origin})
        assert r.status_code == 403 and r.json()["detail"]["reason"] == "cross_origin", origin
    # The box's own page (same origin), and programs that send no Origin, are served.
    r = await api.client.post("/api/v1/pair", json=body, headers={"Origin": f"http://127.0.0.1:{port}"})
    assert r.status_code == 200
    # Reading needs no origin check: without CORS headers a foreign page cannot read the answer.
    r = await api.client.get("/api/v1/devices", headers={"Origin": "http://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


async def test_request_bodies_are_bounded(api: Api) -> None:
    big = b"x" * (256 * 1024)
    r = await api.client.post("/api/v1/devices/x/command", content=big, headers=api.as_admin())
    assert r.status_code == 413 and r.json()["detail"]["reason"] == "too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(64):
            yield b"y" * 8192

    r = await api.client.post("/api/v1/pair", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert (await api.pair()).status_code == 200


_open: list[Any] = []  # the streams' readers: a reader that is dropped closes its stream


async def open_stream(client: httpx.AsyncClient, stack: Any) -> int:
    response = await stack.enter_async_context(client.stream("GET", "/api/v1/stream"))
    if response.status_code == 200:
        reader = response.aiter_text()
        _open.append(reader)
        stack.callback(_open.remove, reader)
        assert "connected" in await anext(reader)
    return int(response.status_code)


async def test_one_client_cannot_take_every_event_stream(tmp_path: Path) -> None:
    from contextlib import AsyncExitStack

    async with (
        running(tmp_path / "state", menu_options={"max_streams": 3, "max_streams_per_client": 2}) as api,
        AsyncExitStack() as stack,
    ):
        hog = await stack.enter_async_context(from_address(api, "127.0.0.9"))
        assert [await open_stream(hog, stack) for _ in range(3)] == [200, 200, 429]
        other = await stack.enter_async_context(from_address(api, "127.0.0.10"))
        assert [await open_stream(other, stack) for _ in range(2)] == [200, 503]  # all LAN streams taken
        # The box's own screen (and an approved TV) always gets its live updates.
        assert await open_stream(api.client, stack) == 200


async def test_one_client_has_only_so_many_requests_in_flight(tmp_path: Path) -> None:
    from contextlib import AsyncExitStack

    async with (
        running(tmp_path / "state", menu_options={"max_streams": 100, "max_streams_per_client": 100}) as api,
        AsyncExitStack() as stack,
    ):
        hog = await stack.enter_async_context(from_address(api, "127.0.0.9"))
        assert {await open_stream(hog, stack) for _ in range(16)} == {200}
        r = await hog.get("/api/v1/devices")
        assert r.status_code == 429 and r.json()["detail"]["reason"] == "busy"
        async with from_address(api, "127.0.0.10") as other:
            assert (await other.get("/api/v1/devices")).status_code == 200
