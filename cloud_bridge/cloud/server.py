"""`cloud serve`: the reference cloud's lifecycle.

One root TaskGroup owns the MQTT connection, the uplink writer and the HTTP server.
SIGTERM/SIGINT set a stop flag; the cloud then stores (and acks) what it has queued, disconnects,
stops its tasks, stops its development broker and closes the database.

The data directory holds everything the cloud is: `ca/` (the gateway CA), `signing/` (Ed25519
keys), `tokens/` (API tokens), `tls/` (broker and client certificates, reissued at every start),
`broker/` (the development broker's config and persistence), `mosquitto.acl`, the SQLite
database by default, and `cloud.json` ({api_url, mqtt_url}) for the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import secrets
import signal
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cloud_bridge.ca import CertificateAuthority, write_private
from cloud_bridge.cloud import CLOUD_JSON, DEFAULT_HTTP, DEFAULT_PUBLIC_HOST, ROLES
from cloud_bridge.cloud.alerts import AlertDesk
from cloud_bridge.cloud.api import ApiContext, Tokens, create_app
from cloud_bridge.cloud.broker import CLOUD_CLIENT_CN, BrokerTls, CloudBroker, write_acl
from cloud_bridge.cloud.db import CloudDB, redact_url, sqlite_url
from cloud_bridge.cloud.service import ACK_MAX_IDS, CloudService, KeyRing
from cloud_bridge.protocol import BridgeError
from gateway import __version__
from gateway.config import parse_host_port
from gateway.errors import BrokerError
from gateway.mqtt import MqttClient
from gateway.web import bind, serve

__all__ = [
    "Cloud",
    "CloudSettings",
    "CloudStartError",
    "load_tokens",
    "parse_mqtts_url",
]

log = logging.getLogger(__name__)

_DB_FILE = "cloud.sqlite3"
_ACL_FILE = "mosquitto.acl"
_MQTT_CONNECT_TIMEOUT_S = 10.0
_HTTP_READY_TIMEOUT_S = 5.0
_DRAIN_TIMEOUT_S = 2.0


class CloudStartError(BridgeError):
    """`cloud serve` cannot start; the message says what to change."""


def parse_mqtts_url(url: str) -> tuple[str, int]:
    """`mqtts://HOST[:PORT]` → (host, port); the cloud link is always TLS (default port 8883)."""
    parts = urlsplit(url)
    if parts.scheme != "mqtts" or not parts.hostname:
        raise CloudStartError(f"--mqtt must look like mqtts://HOST:PORT (got {url!r})")
    try:
        port = parts.port or 8883
    except ValueError as exc:
        raise CloudStartError(f"bad port in {url!r}") from exc
    return parts.hostname, port


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class CloudSettings:
    data_dir: Path
    db_url: str | None = None  # default: SQLite in the data directory
    http_listen: str = DEFAULT_HTTP
    mqtt_url: str | None = None  # an external broker; None starts the development broker
    mqtt_port: int | None = None  # the development broker's port (default: a free one)
    public_host: str = DEFAULT_PUBLIC_HOST
    queue_size: int = 100_000
    ack_max_ids: int = ACK_MAX_IDS
    handle_signals: bool = True

    @property
    def database_url(self) -> str:
        return self.db_url or sqlite_url(self.data_dir / _DB_FILE)


def load_tokens(tokens_dir: Path) -> Tokens:
    """Read the API tokens, creating each (0600) on first start."""
    tokens_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    values: dict[str, str] = {}
    for role in ROLES:
        path = tokens_dir / f"{role}.token"
        try:
            values[role] = path.read_text().strip()
        except FileNotFoundError:
            values[role] = secrets.token_hex(32)  # never starts with '-': safe as a CLI argument
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(values[role] + "\n")
    return Tokens(operator=values["operator"], installer=values["installer"])


@dataclass(frozen=True, slots=True)
class _Material:
    ca: CertificateAuthority
    keys: KeyRing
    tokens: Tokens
    broker_tls: BrokerTls
    client_cert: Path
    client_key: Path


def _prepare(data_dir: Path, public_host: str) -> _Material:
    """Blocking: create or load the CA, keys and tokens; (re)issue this start's certificates."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca = CertificateAuthority.open(data_dir / "ca")
    keys = KeyRing.open(data_dir / "signing")
    tokens = load_tokens(data_dir / "tokens")
    tls_dir = data_dir / "tls"
    hosts = list(dict.fromkeys([public_host, "127.0.0.1", "localhost"]))
    server_cert, server_key = ca.issue_server(hosts)
    write_private(tls_dir / "server.key", server_key)
    (tls_dir / "server.pem").write_bytes(server_cert)
    client_cert, client_key = ca.issue_client(CLOUD_CLIENT_CN)
    write_private(tls_dir / f"{CLOUD_CLIENT_CN}.key", client_key)
    (tls_dir / f"{CLOUD_CLIENT_CN}.pem").write_bytes(client_cert)
    return _Material(
        ca=ca,
        keys=keys,
        tokens=tokens,
        broker_tls=BrokerTls(data_dir / "ca" / "ca.pem", tls_dir / "server.pem", tls_dir / "server.key"),
        client_cert=tls_dir / f"{CLOUD_CLIENT_CN}.pem",
        client_key=tls_dir / f"{CLOUD_CLIENT_CN}.key",
    )


def _client_tls(cafile: Path, certfile: Path, keyfile: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cafile))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(certfile), str(keyfile))
    return ctx


def _write_json(path: Path, value: dict[str, object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    tmp.replace(path)


class Cloud:
    """The whole reference cloud. `await Cloud(settings).run()` until `stop()` or a signal."""

    def __init__(self, settings: CloudSettings, *, http_sockets: Sequence[socket.socket] = ()) -> None:
        """`http_sockets`: listening sockets to serve the API on instead of binding
        `settings.http_listen`; the first one names the API in `api_url`."""
        self.settings = settings
        self._http_sockets = list(http_sockets)
        self._stop = asyncio.Event()
        self._acl_lock = asyncio.Lock()
        self.ready = asyncio.Event()
        self.api_url = ""
        self.mqtt_url = ""
        self.acl_path = settings.data_dir / _ACL_FILE
        self.broker: CloudBroker | None = None
        self.service: CloudService | None = None
        self.db: CloudDB | None = None
        self.tokens: Tokens | None = None

    def stop(self) -> None:
        self._stop.set()

    def _open_http(self) -> list[socket.socket]:
        if self._http_sockets:
            return self._http_sockets
        try:
            host, port = parse_host_port(self.settings.http_listen)
            return [bind(host, port)]
        except (ValueError, OSError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise CloudStartError(
                f"cannot listen on {self.settings.http_listen}: {reason} (pass --http HOST:PORT)"
            ) from exc

    async def run(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        if s.handle_signals:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signal.SIGTERM, self.stop)
                loop.add_signal_handler(signal.SIGINT, self.stop)
        http_socks: list[socket.socket] = []
        try:
            try:
                material = await asyncio.to_thread(_prepare, s.data_dir, s.public_host)
            except OSError as exc:
                raise CloudStartError(
                    f"cannot use data directory {s.data_dir}: {exc} (pass --data-dir or set CLOUD_DATA_DIR)"
                ) from exc
            self.tokens = material.tokens
            http_socks = self._open_http()
            async with CloudDB(s.database_url) as db:
                self.db = db
                await self._run(db, material, http_socks)
        finally:
            if not self._http_sockets:
                for sock in http_socks:
                    sock.close()
            if s.handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    with contextlib.suppress(NotImplementedError, RuntimeError):
                        loop.remove_signal_handler(sig)

    async def _run(self, db: CloudDB, material: _Material, http_socks: list[socket.socket]) -> None:
        s = self.settings
        await asyncio.to_thread(write_acl, self.acl_path, await db.acl_entries())
        async with contextlib.AsyncExitStack() as stack:
            if s.mqtt_url is None:
                listen = s.public_host if _is_ip(s.public_host) else "0.0.0.0"  # noqa: S104 - public host is a name
                broker = CloudBroker(
                    tls=material.broker_tls,
                    acl_file=self.acl_path,
                    workdir=s.data_dir / "broker",
                    host=listen,
                    port=s.mqtt_port,
                )
                try:
                    await stack.enter_async_context(broker)
                except BrokerError as exc:
                    raise CloudStartError(f"cannot start the development broker: {exc}") from exc
                self.broker = broker
                connect_host = "127.0.0.1" if listen in ("0.0.0.0", "::") else listen  # noqa: S104
                mqtt_port = broker.port
                self.mqtt_url = f"mqtts://{_url_host(s.public_host)}:{broker.port}"
            else:
                connect_host, mqtt_port = parse_mqtts_url(s.mqtt_url)
                self.mqtt_url = s.mqtt_url
                log.info(
                    "external broker %s: install %s as its acl_file (rewritten after every provisioning; "
                    "reload mosquitto with SIGHUP), and its TLS listener with cafile %s",
                    s.mqtt_url,
                    self.acl_path,
                    material.broker_tls.cafile,
                )
            tls = await asyncio.to_thread(
                _client_tls, material.broker_tls.cafile, material.client_cert, material.client_key
            )
            mqtt = MqttClient(
                host=connect_host,
                port=mqtt_port,
                client_id=CLOUD_CLIENT_CN,
                tls=tls,
                # A persistent session: the broker queues uplinks while the cloud restarts.
                clean_session=False,
                name="cloud-mqtt",
            )
            service = CloudService(
                db, mqtt, material.keys, queue_size=s.queue_size, ack_max_ids=s.ack_max_ids
            )
            self.service = service
            service.attach()
            desk = AlertDesk(db, service)
            host, port = http_socks[0].getsockname()[:2]
            shown = s.public_host if host in ("0.0.0.0", "::") else host  # noqa: S104
            self.api_url = f"http://{_url_host(shown)}:{port}"
            app = create_app(
                ApiContext(
                    db=db,
                    service=service,
                    ca=material.ca,
                    tokens=material.tokens,
                    mqtt_url=self.mqtt_url,
                    api_url=self.api_url,
                    gateways_changed=self.apply_acl,
                    mqtt_connected=lambda: mqtt.connected,
                    alerts=desk,
                )
            )
            http_ready = asyncio.Event()
            tasks: list[asyncio.Task[None]] = []
            async with asyncio.TaskGroup() as tg:
                tasks.append(tg.create_task(mqtt.run(), name="cloud-mqtt"))
                tasks.append(tg.create_task(service.run_writer(), name="uplink-writer"))
                tasks.append(tg.create_task(desk.run(), name="alert-resend"))
                tasks.append(tg.create_task(serve(app, *http_socks, ready=http_ready), name="http"))
                await self._announce_ready(mqtt, http_ready)
                await self._stop.wait()
                log.info("stopping")
                if not await service.drain(_DRAIN_TIMEOUT_S):
                    log.warning("stopping with uplinks not yet stored (gateways will resend them)")
                await mqtt.close()
                for task in tasks:
                    task.cancel()
            service.detach()
        log.info("stopped")

    async def apply_acl(self) -> None:
        """Rewrite the broker ACL from the database and make the broker re-read it."""
        assert self.db is not None
        async with self._acl_lock:
            entries = await self.db.acl_entries()
            await asyncio.to_thread(write_acl, self.acl_path, entries)
            if self.broker is None:
                log.info(
                    "ACL rewritten (%d gateways): reload the external broker to apply %s",
                    len(entries),
                    self.acl_path,
                )
                return
            try:
                await self.broker.reload()
            except BridgeError as exc:
                log.error("broker ACL not applied: %s", exc)

    async def _announce_ready(self, mqtt: MqttClient, http_ready: asyncio.Event) -> None:
        with contextlib.suppress(BrokerError):
            await mqtt.wait_connected(_MQTT_CONNECT_TIMEOUT_S)
        if not mqtt.connected:
            log.warning("broker %s not reachable yet; serving anyway and retrying", self.mqtt_url)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_HTTP_READY_TIMEOUT_S):
                await http_ready.wait()
        s = self.settings
        await asyncio.to_thread(
            _write_json,
            s.data_dir / CLOUD_JSON,
            {"api_url": self.api_url, "mqtt_url": self.mqtt_url, "pid": os.getpid()},
        )
        self.ready.set()
        log.info(
            "cloud ready: api %s mqtt %s (%s), %s, data %s, version %s",
            self.api_url,
            self.mqtt_url,
            "connected" if mqtt.connected else "not connected",
            redact_url(s.database_url),
            s.data_dir,
            __version__,
        )
