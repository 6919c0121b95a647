"""MQTT plumbing shared by the simulators: broker URLs, a will-carrying client, reconnects.

This is the only module of `firmware_sim` that drives aiomqtt or paho; simulators see `Link` (publish,
subscribe) and `Inbound` (a received message), and subclass `MqttFirmware`, which keeps a
device on its broker the way real firmware does: connect with a last will, announce (retained
topics included) after every (re)connect, serve commands and periodic reports while connected,
retry with capped, jittered exponential backoff when the broker goes away, and say goodbye
(publish its offline state itself, because a clean DISCONNECT does not fire the will) when
it is stopped.

The hostile simulator gets `Mqtt5Probe` instead: one MQTT 5 connection on paho, driven on the
event loop like `gateway.mqtt`, that leaves no will, connects under any client id and shows
the broker's reason codes (CONNACK, PUBACK, DISCONNECT), which aiomqtt does not surface.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import random
import socket
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, Self

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.client import ConnectFlags, DisconnectFlags
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

__all__ = [
    "DEFAULT_BROKER_URL",
    "Backoff",
    "BrokerAddress",
    "BrokerUrlError",
    "FirmwareSimError",
    "Inbound",
    "LastWill",
    "Link",
    "LinkDown",
    "Mqtt5Probe",
    "MqttFirmware",
    "PeerComplaints",
    "Reason",
    "parse_mqtt_url",
]

_log = logging.getLogger(__name__)

DEFAULT_BROKER_URL = "mqtt://127.0.0.1:1883"
MQTT_DEFAULT_PORT = 1883  # registered with IANA for MQTT without TLS (MQTT 3.1.1 §4.2)
MQTT_TIMEOUT_S = 10.0  # CONNACK, SUBACK, PUBACK and DISCONNECT waits
FAREWELL_TIMEOUT_S = 3.0  # the offline announcement on a clean stop
RECONNECT_MIN_S = 0.25
RECONNECT_MAX_S = 15.0
# A probe never sends PINGREQ: its connections last seconds to minutes, far below 1.5
# keep-alives (MQTT 5.0 §3.1.2.10).
PROBE_KEEPALIVE_S = 600
PROBE_WINDOW = 10  # a probe's QoS 1 publishes in flight; below any broker's Receive Maximum
PROBE_CLOSE_TIMEOUT_S = 1.0  # for our DISCONNECT to leave before the socket is closed
# Reports use the names of MQTT 5.0 §2.4; paho spells these few differently.
_SPEC_REASON_NAMES = {
    0x81: "Malformed Packet", 0x82: "Protocol Error", 0x84: "Unsupported Protocol Version",
    0x85: "Client Identifier not valid", 0x86: "Bad User Name or Password",
    0x8D: "Keep Alive timeout", 0x90: "Topic Name invalid", 0x93: "Receive Maximum exceeded",
}  # fmt: skip

# aiomqtt warns "There are N pending publish calls." whenever more than ten publishes wait
# for their acks (a simulator announcing its retained topics trips it on every connect), and
# paho logs an ERROR for every connection reset when a broker restarts. Everything that
# matters reaches us as an exception, which the simulator logs once, so the client library's
# own logger only speaks for the unexpected.
_CLIENT_LOG = logging.getLogger(f"{__name__}.client")
_CLIENT_LOG_LEVEL = logging.CRITICAL
_BARRIER_FILTER = "firmware-sim/barrier"  # never subscribed; see Link.barrier()


class FirmwareSimError(Exception):
    """Root of the errors raised by `firmware_sim`."""


class BrokerUrlError(FirmwareSimError, ValueError):
    """A broker URL that is not `mqtt://HOST[:PORT]`."""


class LinkDown(FirmwareSimError):
    """The broker could not be reached, or the connection to it was lost."""


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where a simulator's broker is; `str()` never shows the password."""

    host: str
    port: int = MQTT_DEFAULT_PORT
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{self.username}@" if self.username else ""
        return f"mqtt://{user}{host}:{self.port}"


def parse_mqtt_url(url: str) -> BrokerAddress:
    """`mqtt://[user[:password]@]HOST[:PORT]` → BrokerAddress; BrokerUrlError otherwise."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise BrokerUrlError(f"not a broker URL: {url!r} ({exc})") from exc
    if parts.scheme not in ("mqtt", "tcp"):
        raise BrokerUrlError(f"not a broker URL: {url!r} (expected mqtt://HOST:PORT)")
    if not parts.hostname:
        raise BrokerUrlError(f"no host in broker URL {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise BrokerUrlError(f"unexpected path or query in broker URL {url!r}")
    return BrokerAddress(
        host=parts.hostname,
        port=port if port is not None else MQTT_DEFAULT_PORT,
        username=urllib.parse.unquote(parts.username) if parts.username else None,
        password=urllib.parse.unquote(parts.password) if parts.password else None,
    )


@dataclass(slots=True)
class Backoff:
    """Capped exponential backoff with "equal jitter": attempt n waits between half and all
    of min(max_s, min_s * 2**n), so simulators restarted together do not reconnect in step."""

    rng: random.Random
    min_s: float = RECONNECT_MIN_S
    max_s: float = RECONNECT_MAX_S

    def delay_s(self, attempt: int) -> float:
        ceiling = min(self.max_s, self.min_s * 2 ** min(attempt, 32))
        return self.rng.uniform(ceiling / 2, ceiling)


@dataclass(frozen=True, slots=True)
class Inbound:
    """A message the broker delivered to a simulator."""

    topic: str
    payload: bytes
    retain: bool = False

    def text(self) -> str:
        """The payload as UTF-8 text; UnicodeDecodeError for anything else."""
        return self.payload.decode("utf-8")


@dataclass(frozen=True, slots=True)
class LastWill:
    """The will a simulator leaves with the broker at connect time."""

    topic: str
    payload: str
    retain: bool = True
    qos: int = 1


class Link:
    """A simulator's live connection: what it may do with the broker while connected."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self._client = client
        self.closing = False  # set while saying goodbye after a cancellation

    async def publish(self, topic: str, payload: str | bytes, *, retain: bool = False, qos: int = 0) -> None:
        _log.debug("publish %s%s %s", topic, " (retained)" if retain else "", _preview(payload))
        try:
            await self._client.publish(topic, payload, qos=qos, retain=retain, timeout=MQTT_TIMEOUT_S)
        except aiomqtt.MqttError as exc:
            raise LinkDown(f"publish to {topic} failed: {exc}") from exc
        self._check_cancelled()

    async def subscribe(self, *topics: str, qos: int = 0) -> None:
        try:
            await self._client.subscribe([(t, qos) for t in topics], timeout=MQTT_TIMEOUT_S)
        except aiomqtt.MqttError as exc:
            raise LinkDown(f"subscribe to {', '.join(topics)} failed: {exc}") from exc
        self._check_cancelled()

    def _check_cancelled(self) -> None:
        """aiomqtt waits with asyncio.wait_for, which on Python 3.11 returns the result and
        drops a cancellation that arrives as the awaited ack completes; without this check
        a stopped simulator could keep running. Not while closing, when cancelled is normal."""
        task = asyncio.current_task()
        if not self.closing and task is not None and task.cancelling():
            raise asyncio.CancelledError

    async def barrier(self) -> None:
        """Return once the broker has processed everything sent before: a broker handles one
        connection's packets in order, so the UNSUBACK of a filter nobody subscribed to comes
        after every earlier PUBLISH was stored and routed. Invisible to other clients."""
        try:
            await self._client.unsubscribe(_BARRIER_FILTER, timeout=MQTT_TIMEOUT_S)
        except aiomqtt.MqttError as exc:
            raise LinkDown(f"broker round trip failed: {exc}") from exc
        self._check_cancelled()

    async def inbound(self) -> AsyncIterator[Inbound]:
        """Messages as they arrive; LinkDown when the connection drops."""
        messages = self._client.messages
        while True:
            try:
                message = await anext(messages)
            except aiomqtt.MqttError as exc:
                raise LinkDown(f"connection lost: {exc}") from exc
            yield Inbound(topic=message.topic.value, payload=message.payload, retain=message.retain)


class PeerComplaints:
    """Bad input from a peer: counted, logged at WARNING the first time per kind, then DEBUG."""

    def __init__(self, logger: logging.Logger, name: str) -> None:
        self._log = logger
        self._name = name
        self._seen: set[str] = set()
        self.count = 0

    def report(self, kind: str, message: str, *args: object) -> None:
        self.count += 1
        first = kind not in self._seen
        self._seen.add(kind)
        self._log.log(
            logging.WARNING if first else logging.DEBUG,
            "%s: " + message + ("" if first else " (repeated, #%d)"),
            self._name,
            *args,
            *(() if first else (self.count,)),
        )


class MqttFirmware(abc.ABC):
    """An MQTT device that stays on its broker until cancelled.

    Subclasses say what they leave as a will, what they announce and subscribe to on every
    connect, how they answer a message, what they report periodically, and what they say
    when stopped cleanly. `run()` does the rest.
    """

    def __init__(
        self,
        *,
        name: str,
        client_id: str,
        keepalive_s: int,
        rng: random.Random,
        logger: logging.Logger,
    ) -> None:
        self._name = name
        self._client_id = client_id
        self._keepalive_s = keepalive_s
        self._rng = rng
        self._log = logger
        self._connected = False
        self._connections = 0
        self._ready = asyncio.Event()
        self._running = False
        self.complaints = PeerComplaints(logger, name)

    @property
    def name(self) -> str:
        return self._name

    @property
    def connected(self) -> bool:
        """True while connected and announced."""
        return self._connected

    @property
    def connections(self) -> int:
        """How many times this simulator has connected and announced itself."""
        return self._connections

    async def wait_ready(self) -> None:
        """Return once the simulator has connected and announced itself the first time."""
        await self._ready.wait()

    # --- what a device does -------------------------------------------------------------

    @abc.abstractmethod
    def will(self) -> LastWill:
        """The last will left with the broker."""

    @abc.abstractmethod
    async def announce(self, link: Link) -> None:
        """Subscribe and publish the retained topics; runs after every (re)connect."""

    @abc.abstractmethod
    async def handle(self, link: Link, message: Inbound) -> None:
        """Answer one message. Bad input is reported to `self.complaints`, never raised."""

    @abc.abstractmethod
    async def report(self, link: Link) -> None:
        """Periodic reports while connected; runs until cancelled (or returns if none)."""

    @abc.abstractmethod
    async def farewell(self, link: Link) -> None:
        """What the device publishes when stopped cleanly, before it disconnects."""

    # --- the connection loop ----------------------------------------------------------

    async def run(self, broker_url: str) -> None:
        """Stay connected to `broker_url` until cancelled; BrokerUrlError for a bad URL."""
        address = parse_mqtt_url(broker_url)
        if self._running:
            raise FirmwareSimError(f"{self._name} is already running")
        self._running = True
        backoff = Backoff(rng=self._rng)
        failures = 0
        try:
            while True:
                served_before = self._connections
                try:
                    await self._session(address)
                except (LinkDown, ExceptionGroup) as exc:
                    reason = _link_down_reason(exc)
                    # A TaskGroup whose child failed can swallow our own cancellation
                    # (Python 3.11); never reconnect once we were asked to stop.
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise asyncio.CancelledError from exc
                    if self._connections > served_before:
                        failures = 0
                    delay = backoff.delay_s(failures)
                    failures += 1
                    self._log.log(
                        logging.WARNING if failures == 1 else logging.DEBUG,
                        "%s: %s; retrying in %.2f s (attempt %d)",
                        self._name,
                        reason,
                        delay,
                        failures,
                    )
                    await asyncio.sleep(delay)
        finally:
            self._running = False
            self._connected = False

    async def _session(self, address: BrokerAddress) -> None:
        """One connection: announce, serve until it drops (LinkDown) or we are cancelled."""
        async with _connect(
            address,
            client_id=self._client_id,
            will=self.will(),
            keepalive_s=self._keepalive_s,
        ) as client:
            link = Link(client)
            try:
                await self.announce(link)
                await link.barrier()  # "ready" means the retained topics are on the broker
                self._connected = True
                self._connections += 1
                self._log.info(
                    "%s: %s %s",
                    self._name,
                    "connected to" if self._connections == 1 else "reconnected to",
                    address,
                )
                self._ready.set()
                # Serving in the body (not in a child) matters on Python 3.11: a child that
                # fails while the parent already waits in TaskGroup.__aexit__ leaves the
                # parent with a cancel request that is never withdrawn (fixed in 3.12).
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self.report(link), name=f"{self._name}-report")
                    await self._serve(link)
            except asyncio.CancelledError:
                self._connected = False
                link.closing = True
                with contextlib.suppress(LinkDown, TimeoutError):
                    async with asyncio.timeout(FAREWELL_TIMEOUT_S):
                        await self.farewell(link)
                self._log.info("%s: stopped", self._name)
                raise
            finally:
                self._connected = False

    async def _serve(self, link: Link) -> None:
        async for message in link.inbound():
            await self.handle(link, message)


@contextlib.asynccontextmanager
async def _connect(
    address: BrokerAddress, *, client_id: str, will: LastWill, keepalive_s: int
) -> AsyncIterator[aiomqtt.Client]:
    """A connected client that is always disconnected (and its socket closed) on exit."""
    if _CLIENT_LOG.level == logging.NOTSET:
        _CLIENT_LOG.setLevel(_CLIENT_LOG_LEVEL)
    client = aiomqtt.Client(
        address.host,
        address.port,
        username=address.username,
        password=address.password,
        identifier=client_id,
        logger=_CLIENT_LOG,
        will=aiomqtt.Will(will.topic, will.payload, qos=will.qos, retain=will.retain),
        keepalive=keepalive_s,
        timeout=MQTT_TIMEOUT_S,
        # Small packets leave at once, as from a device's lwIP stack: with Nagle the second of
        # two quick publishes (RESULT, then POWER) waits for the broker's delayed ACK, 40 ms.
        socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
    )
    try:
        await _enter(client)
    except aiomqtt.MqttError as exc:
        _close_half_open(client)
        raise LinkDown(f"cannot connect to {address}: {exc}") from exc
    try:
        yield client
    finally:
        # aiomqtt waits up to its timeout for the broker to see the DISCONNECT; if the
        # connection is already gone there is nothing left to do.
        with contextlib.suppress(aiomqtt.MqttError):
            await client.__aexit__(None, None, None)
        _close_half_open(client)


async def _enter(client: aiomqtt.Client) -> None:
    """Connect, and if cancelled meanwhile, leave nothing open behind.

    aiomqtt connects in an executor thread that cannot be interrupted: cancelling the wait
    would let the thread open a socket nobody closes. So on cancellation we give the attempt
    a moment to end (milliseconds on a LAN), close whatever it opened, then let the
    cancellation through. (Past that moment paho closes the socket when it is collected.)
    """
    attempt = asyncio.create_task(client.__aenter__(), name="mqtt-connect")
    try:
        await asyncio.shield(attempt)
    except asyncio.CancelledError:
        await asyncio.wait({attempt}, timeout=FAREWELL_TIMEOUT_S)
        if not attempt.done():
            attempt.cancel()
            await asyncio.wait({attempt})
        if not attempt.cancelled() and attempt.exception() is None:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)
        _close_half_open(client)
        raise
    except BaseException:
        _close_half_open(client)
        raise


def _close_half_open(client: aiomqtt.Client) -> None:
    """Close a socket aiomqtt left open: it does so when the CONNACK wait times out or is
    cancelled, leaving a registered reader and an unclosed socket behind."""
    paho = client._client  # the one place we reach into aiomqtt
    if paho.socket() is not None:
        paho._sock_close()


def _link_down_reason(exc: LinkDown | ExceptionGroup[Exception]) -> str:
    """The reason behind a lost link, also when a TaskGroup wrapped it; re-raise anything
    that is not a lost link (that is a bug of ours, not the network)."""
    if isinstance(exc, LinkDown):
        return str(exc)
    link_errors, rest = exc.split(LinkDown)
    if rest is not None or link_errors is None:
        raise exc
    first: BaseException = link_errors
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return str(first)


def _preview(payload: str | bytes, limit: int = 120) -> str:
    text = payload if isinstance(payload, str) else payload.decode("utf-8", "replace")
    return text if len(text) <= limit else text[:limit] + "…"


# --- a bare MQTT 5 connection, for the hostile simulator ----------------------------------


@dataclass(frozen=True, slots=True, order=True)
class Reason:
    """A reason code from the broker and its name (MQTT 5.0 §2.4); 0x80 and up is a failure."""

    code: int
    name: str = field(compare=False)

    @classmethod
    def of(cls, reason: ReasonCode) -> Reason:
        return cls(reason.value, _SPEC_REASON_NAMES.get(reason.value, reason.getName()))

    @property
    def failure(self) -> bool:
        return self.code >= 0x80


class Mqtt5Probe:
    """One MQTT 5 connection without a will, connected once, that records what the broker says.

    `async with` connects (Clean Start, any client id, the address's credentials) and records
    the CONNACK in `connack` even when refused; `publish()` counts the PUBACK reasons in
    `acks`; `hold()` waits for the broker to end the connection, whose DISCONNECT reason (if
    it sent one) lands in `disconnect`. LinkDown when the broker cannot be reached, gives no
    CONNACK or PUBACK within `timeout_s`, or ends the connection while we wait on it.
    """

    def __init__(
        self,
        address: BrokerAddress,
        *,
        client_id: str,
        timeout_s: float = MQTT_TIMEOUT_S,
        window: int = PROBE_WINDOW,
    ) -> None:
        self.address = address
        self.client_id = client_id
        self.connack: Reason | None = None
        self.disconnect: Reason | None = None  # the broker's DISCONNECT, if it sent one
        self.sent = 0
        self.acks: Counter[Reason] = Counter()
        self._timeout_s = timeout_s
        self._window = window
        self._unacked: set[int] = set()
        self._ended = asyncio.Event()
        self._progress = asyncio.Event()  # set by every CONNACK, PUBACK and end
        self._loop: asyncio.AbstractEventLoop | None = None

        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        client.connect_timeout = timeout_s
        if address.username is not None or address.password is not None:
            client.username_pw_set(address.username, address.password)
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        client.on_disconnect = self._on_disconnect
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        self._paho = client

    @property
    def accepted(self) -> bool:
        """True if the broker accepted the CONNECT (the connection may have ended since)."""
        return self.connack is not None and self.connack.code == 0

    async def __aenter__(self) -> Self:
        if self._loop is not None:
            raise FirmwareSimError(f"probe {self.client_id} of {self.address} was used already")
        loop = self._loop = asyncio.get_running_loop()
        # paho resolves and connects with blocking calls, hence the executor.
        attempt = loop.run_in_executor(None, self._blocking_connect)
        try:
            async with asyncio.timeout(self._timeout_s):
                await asyncio.shield(attempt)
                while self.connack is None:
                    await self._progressed()
        except (OSError, TimeoutError, LinkDown) as exc:
            self._abandon(attempt)
            raise LinkDown(f"no CONNACK from {self.address}: {exc!r}") from exc
        except BaseException:
            self._abandon(attempt)
            raise
        _log.debug("probe %s: CONNACK %s from %s", self.client_id, self.connack, self.address)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            # A normal DISCONNECT: the broker drops the session and publishes no will (§3.14).
            if (
                self.accepted
                and not self._ended.is_set()
                and self._paho.disconnect() == MQTTErrorCode.MQTT_ERR_SUCCESS
            ):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(PROBE_CLOSE_TIMEOUT_S):
                        await self._ended.wait()
        finally:
            self._close_socket()

    async def publish(self, messages: Iterable[tuple[str, bytes, bool]]) -> None:
        """Publish each (topic, payload, retain) at QoS 1 with up to `window` in flight, and
        wait for every PUBACK; each must come within `timeout_s`."""
        for topic, payload, retain in messages:
            await self._acked(fewer_than=self._window)
            info = self._paho.publish(topic, payload, qos=1, retain=retain)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise LinkDown(f"publish to {self.address} failed: {paho.error_string(info.rc)}")
            self._unacked.add(info.mid)
            self.sent += 1
        await self._acked(fewer_than=1)

    async def hold(self, seconds: float) -> bool:
        """Stay connected up to `seconds`; True if the broker ended the connection first."""
        try:
            async with asyncio.timeout(seconds):
                await self._ended.wait()
        except TimeoutError:
            return False
        return True

    def _blocking_connect(self) -> None:
        self._paho.connect(
            self.address.host, self.address.port, keepalive=PROBE_KEEPALIVE_S, clean_start=True
        )

    async def _acked(self, *, fewer_than: int) -> None:
        """Wait until fewer than `fewer_than` publishes await their PUBACK, each within the timeout."""
        while len(self._unacked) >= fewer_than:
            try:
                async with asyncio.timeout(self._timeout_s):
                    await self._progressed()
            except TimeoutError as exc:
                raise LinkDown(f"no PUBACK from {self.address} within {self._timeout_s:g} s") from exc

    async def _progressed(self) -> None:
        """Wait for the next CONNACK or PUBACK (the caller bounds the wait); LinkDown once the
        connection has ended."""
        if self._ended.is_set():
            if self.disconnect is not None:
                raise LinkDown(f"{self.address} disconnected us: {self.disconnect.name}")
            raise LinkDown(f"{self.address} closed the connection")
        self._progress.clear()
        await self._progress.wait()

    def _abandon(self, attempt: asyncio.Future[None]) -> None:
        """Close the socket, now and once a connect still running in the executor (which
        cannot be interrupted) has ended, so that it leaves no socket behind."""
        self._close_socket()
        if not attempt.done():
            attempt.add_done_callback(lambda _: self._close_socket())

    def _close_socket(self) -> None:
        self._paho._sock_close()  # the one place we reach into paho; fires on_socket_close

    def _ended_now(self) -> None:
        self._ended.set()
        self._progress.set()

    # paho's callbacks: on the loop, but for the socket hooks during the connect

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: ConnectFlags, reason: ReasonCode, props: Any
    ) -> None:
        self.connack = Reason.of(reason)
        self._progress.set()

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode, props: Properties
    ) -> None:
        if mid in self._unacked:
            self._unacked.discard(mid)
            self.acks[Reason.of(reason)] += 1  # §3.4.2.1: paho reads an absent reason as 0
            self._progress.set()

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: DisconnectFlags, reason: ReasonCode, props: Any
    ) -> None:
        if flags.is_disconnect_packet_from_server:
            self.disconnect = Reason.of(reason)
        self._ended_now()

    def _on_readable(self) -> None:
        try:
            self._paho.loop_read(self._window)
        except (KeyError, ValueError) as exc:
            # paho's decoders raise these for reason codes and properties MQTT 5 does not define.
            _log.warning("probe %s: %s sent a packet paho cannot read: %r", self.client_id, self.address, exc)
            self._close_socket()
            self._ended_now()

    # Adding a reader or writer is queued on the loop (the connect runs in the executor);
    # removing one happens at once, while the socket is still open.

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._add_reader, sock)

    def _on_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._add_writer, sock)

    def _add_reader(self, sock: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(ValueError, OSError):  # closed meanwhile
            self._loop.add_reader(sock, self._on_readable)

    def _add_writer(self, sock: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(ValueError, OSError):  # closed meanwhile
            self._loop.add_writer(sock, self._paho.loop_write)

    def _on_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_writer(sock)

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
