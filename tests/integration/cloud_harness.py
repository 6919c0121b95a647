"""Test harness for the reference cloud: databases, an in-process cloud, provisioned gateways.

Everything is real: PostgreSQL over its socket (a fresh database per test), SQLite files,
Mosquitto with mutual TLS, uvicorn on loopback, certificates from the cloud's own CA.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest

from cloud_bridge.ca import make_csr
from cloud_bridge.cloud import Cloud, CloudSettings
from cloud_bridge.cloud.db import sqlite_url
from cloud_bridge.identity import Identity, IdentityRecord
from cloud_bridge.protocol import (
    Envelope,
    SignatureError,
    TrustedKey,
    TrustStore,
    new_envelope,
    parse_envelope,
    topics,
)
from gateway.broker import free_port
from gateway.mqtt import Message, MqttClient, Will

PG_SOCKET_DIR = os.environ.get("CLOUD_TEST_PGHOST", "/var/run/postgresql")
PG_USER = os.environ.get("CLOUD_TEST_PGUSER", "postgres")
DB_KINDS = ["sqlite", "postgres"]


# -- databases -------------------------------------------------------------------------------


async def _pg_admin() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(host=PG_SOCKET_DIR, user=PG_USER, database="postgres", timeout=10)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        pytest.fail(
            f"PostgreSQL is not reachable through {PG_SOCKET_DIR} as user {PG_USER!r} ({exc!r}). "
            "The cloud's database tests run on PostgreSQL too (CI needs them): start the server "
            "(`pg_ctlcluster 15 main start`), or point CLOUD_TEST_PGHOST/CLOUD_TEST_PGUSER at one "
            "that trusts local connections."
        )


@asynccontextmanager
async def database_url(kind: str, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty database of `kind` for one test, dropped afterwards."""
    if kind == "sqlite":
        yield sqlite_url(tmp_path / "db" / "cloud.sqlite3")
        return
    name = f"cloud_test_{secrets.token_hex(6)}"
    admin = await _pg_admin()
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield f"postgres://{PG_USER}@/{name}?host={PG_SOCKET_DIR}"
    finally:
        admin = await _pg_admin()
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


# -- the cloud, in process ----------------------------------------------------------------------


@dataclass
class Provisioned:
    """What a box keeps after `POST /v1/provision` (plus its private key)."""

    gateway_id: str
    household: str
    region: str
    key_pem: bytes
    certificate_pem: str
    ca_pem: str
    trust: list[TrustedKey]
    mqtt_url: str
    api_url: str


class CloudHarness:
    """A running in-process cloud with HTTP clients for both roles."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        assert cloud.tokens is not None
        self.operator_token = cloud.tokens.operator
        self.installer_token = cloud.tokens.installer
        self.api = httpx.AsyncClient(
            base_url=cloud.api_url, headers={"Authorization": f"Bearer {self.operator_token}"}, timeout=30
        )
        self.anon = httpx.AsyncClient(base_url=cloud.api_url, timeout=30)

    async def aclose(self) -> None:
        await self.api.aclose()
        await self.anon.aclose()

    async def get(self, path: str, **params: Any) -> Any:
        resp = await self.api.get(path, params=params)
        assert resp.status_code == 200, resp.text
        return resp.json()

    async def workorder(self, household: str = "H-1", region: str = "210102", **extra: Any) -> dict[str, Any]:
        resp = await self.api.post("/v1/workorders", json={"household": household, "region": region, **extra})
        assert resp.status_code == 201, resp.text
        return dict(resp.json())

    async def provision(
        self, gateway_id: str, *, household: str = "H-1", region: str = "210102", code: str | None = None
    ) -> Provisioned:
        if code is None:
            code = (await self.workorder(household, region))["code"]
        key_pem, csr_pem = make_csr(gateway_id)
        resp = await self.anon.post(
            "/v1/provision", json={"code": code, "gateway_id": gateway_id, "csr_pem": csr_pem.decode()}
        )
        assert resp.status_code == 200, resp.text
        body = resp.json()
        return Provisioned(
            gateway_id=body["gateway_id"],
            household=body["household"],
            region=body["region"],
            key_pem=key_pem,
            certificate_pem=body["certificate_pem"],
            ca_pem=body["ca_pem"],
            trust=[TrustedKey.model_validate(k) for k in body["trust"]],
            mqtt_url=body["mqtt_url"],
            api_url=body["api_url"],
        )


@asynccontextmanager
async def running_cloud(
    data_dir: Path, db_url: str, *, mqtt_port: int | None = None
) -> AsyncIterator[CloudHarness]:
    """`cloud serve` in this process (no signal handlers), stopped and checked at exit."""
    settings = CloudSettings(
        data_dir=data_dir,
        db_url=db_url,
        http_listen="127.0.0.1:0",
        mqtt_port=mqtt_port,
        handle_signals=False,
    )
    cloud = Cloud(settings)
    task = asyncio.create_task(cloud.run(), name="cloud")
    ready = asyncio.create_task(cloud.ready.wait(), name="cloud-ready")
    done, _ = await asyncio.wait({task, ready}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if ready not in done:
        ready.cancel()
        if task in done:
            task.result()  # raises what stopped it
        task.cancel()
        raise AssertionError("the cloud was not ready within 30 s")
    harness = CloudHarness(cloud)
    try:
        yield harness
    finally:
        await harness.aclose()
        cloud.stop()
        async with asyncio.timeout(15):
            await task


# -- a gateway's cloud link, as the agent would run it ----------------------------------------------


def install_identity(prov: Provisioned, state_dir: Path, *, mqtt_url: str | None = None) -> Identity:
    """What `gateway provision` leaves on the box (optionally pointed at a proxy)."""
    record = IdentityRecord(
        gateway_id=prov.gateway_id,
        household=prov.household,
        region=prov.region,
        mqtt_url=mqtt_url or prov.mqtt_url,
        api_url=prov.api_url,
    )
    return Identity.save(
        state_dir,
        record,
        key_pem=prov.key_pem,
        cert_pem=prov.certificate_pem.encode(),
        ca_pem=prov.ca_pem.encode(),
        trust=prov.trust,
    )


def client_tls(prov: Provisioned, directory: Path) -> ssl.SSLContext:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.pem").write_text(prov.ca_pem)
    (directory / "cert.pem").write_text(prov.certificate_pem)
    (directory / "key.pem").write_bytes(prov.key_pem)
    ctx = ssl.create_default_context(cafile=str(directory / "ca.pem"))
    ctx.load_cert_chain(str(directory / "cert.pem"), str(directory / "key.pem"))
    return ctx


@dataclass
class Down:
    topic: str
    envelope: Envelope
    verified: bool
    error: str = ""


@dataclass
class _Seen:
    messages: list[Message] = field(default_factory=list)
    downs: list[Down] = field(default_factory=list)
    acked: dict[str, int] = field(default_factory=dict)


class GatewayLink:
    """A provisioned gateway's MQTT link: mutual TLS, presence, uplinks, verified downlinks.

    `async with GatewayLink(prov, dir) as gw:`; every message on the subscribed filters is kept,
    downlinks are parsed and verified against the gateway's trust store, acks are counted.
    """

    def __init__(
        self,
        prov: Provisioned,
        directory: Path,
        *,
        extra_filters: tuple[str, ...] = (),
        announce: bool = True,
        on_command: Callable[[GatewayLink, Envelope], None] | None = None,
    ) -> None:
        self.prov = prov
        self.id = prov.gateway_id
        self.trust = TrustStore(prov.trust)
        parts = urlsplit(prov.mqtt_url)
        assert parts.scheme == "mqtts" and parts.hostname and parts.port
        self.client = MqttClient(
            host=parts.hostname,
            port=parts.port,
            client_id=self.id,
            tls=client_tls(prov, directory / self.id),
            will=Will(topics.presence(self.id), b"offline"),
            reconnect_max_s=0.3,
            name=self.id,
        )
        self._announce = announce
        self._on_command = on_command
        self.seen = _Seen()
        self._changed = asyncio.Event()
        filters = list(dict.fromkeys([*topics.gateway_subscriptions(self.id, prov.region), *extra_filters]))
        for f in filters:
            self.client.subscribe(f, self._handle, qos=1)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> GatewayLink:
        self._task = asyncio.create_task(self.client.run(), name=f"link-{self.id}")
        await self.client.wait_connected(10)
        if self._announce:
            await self.client.publish_acked(topics.presence(self.id), b"online", retain=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        final = [(topics.presence(self.id), b"offline", True)] if self._announce else []
        await self.client.close(final=final)
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    def _handle(self, msg: Message) -> None:
        self.seen.messages.append(msg)
        try:
            env = parse_envelope(msg.payload)
        except SignatureError:
            self._changed.set()
            return
        try:
            self.trust.verify(env)
            down = Down(msg.topic, env, True)
        except SignatureError as exc:
            down = Down(msg.topic, env, False, exc.reason)
        self.seen.downs.append(down)
        if down.verified and env.type == "ack" and env.gateway_id == self.id:
            for ack_id in env.payload["ids"]:
                self.seen.acked[ack_id] = self.seen.acked.get(ack_id, 0) + 1
        if down.verified and env.type == "command" and self._on_command is not None:
            self._on_command(self, env)
        self._changed.set()

    # -- uplinks ----------------------------------------------------------------------------

    def envelope(self, type_: str, payload: dict[str, Any], *, gateway_id: str | None = None) -> Envelope:
        return new_envelope(type_, payload, gateway_id=gateway_id or self.id)

    def publish(self, env: Envelope, *, topic: str | None = None) -> Envelope:
        self.client.publish(topic or topics.up(self.id), env.to_bytes(), qos=1)
        return env

    def send(self, type_: str, payload: dict[str, Any]) -> Envelope:
        return self.publish(self.envelope(type_, payload))

    async def wait(self, predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"{self.id}: timed out after {timeout:g} s waiting for {what or predicate}"
            ) from None

    async def wait_acked(self, *envs: Envelope, timeout: float = 10.0) -> None:
        ids = [e.id for e in envs]
        await self.wait(
            lambda: all(i in self.seen.acked for i in ids), timeout, f"acks for {len(ids)} uplinks"
        )

    async def wait_down(self, match: Callable[[Down], bool], timeout: float = 10.0, what: str = "") -> Down:
        found: list[Down] = []

        def check() -> bool:
            found[:] = [d for d in self.seen.downs if match(d)]
            return bool(found)

        await self.wait(check, timeout, what)
        return found[0]

    def downs(self, type_: str) -> list[Down]:
        return [d for d in self.seen.downs if d.envelope.type == type_]


def reply_to(link: GatewayLink, command: Envelope, **payload: Any) -> Envelope:
    return link.send("reply", {"command_id": command.id, **payload})


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


__all__ = [
    "DB_KINDS",
    "CloudHarness",
    "Down",
    "GatewayLink",
    "Provisioned",
    "client_tls",
    "database_url",
    "dumps",
    "free_port",
    "reply_to",
    "running_cloud",
]
