"""MQTT plumbing shared by the simulators: broker URLs, a will-carrying client, reconnects.

This is the only module of `firmware_sim` that drives aiomqtt; simulators see `Link` (publish,
subscribe) and `Inbound` (a received message), and subclass `MqttFirmware`, which keeps a
device on its broker the way real firmware does: connect with a last will, announce (retained
topics included) after every (re)connect, serve commands and periodic reports while connected,
retry with capped, jittered exponential backoff when the broker goes away, and say goodbye
(publish its offline state itself, because a clean DISCONNECT does not fire the will) when
it is stopped.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import random
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiomqtt

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
    "MqttFirmware",
    "PeerComplaints",
    "parse_mqtt_url",
]

_log = logging.getLogger(__name__)

DEFAULT_BROKER_URL = "mqtt://127.0.0.1:1883"
MQTT_DEFAULT_PORT = 1883  # registered with IANA for MQTT without TLS (MQTT 3.1.1 §4.2)
MQTT_TIMEOUT_S = 10.0  # CONNACK, SUBACK, PUBACK and DISCONNECT waits
FAREWELL_TIMEOUT_S = 3.0  # the offline announcement on a clean stop
RECONNECT_MIN_S = 0.25
RECONNECT_MAX_S = 15.0

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
