"""One MQTT connection, driven on the asyncio event loop without a thread.

This is the only module that imports paho. paho's socket hooks become event-loop readers and
writers (as aiomqtt does), but messages are handed to plain callbacks registered per topic
filter instead of an async iterator, and reads are drained in bulk: paho reads a packet with
three or more `recv` calls and processes one packet per `loop_read` for QoS 0, so the socket is
wrapped in a small read buffer and every readable event drains all buffered packets. The
numbers behind this choice are in docs/benchmarks.md.

The client reconnects by itself with capped, jittered exponential backoff, restores every
subscription after each connect, and then runs the `on_connect` hooks (where callers
republish their retained topics).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from gateway.errors import BrokerError

__all__ = ["Message", "MqttClient", "MqttStats", "Will", "topic_matches", "valid_filter", "valid_topic"]

log = logging.getLogger(__name__)

_READ_CHUNK = 256 * 1024
_MAX_INFLIGHT = 1000
_MISC_INTERVAL_S = 1.0
_CLOSE_TIMEOUT_S = 1.0
_CONNACK_ERRORS = {
    4: "bad user name or password",
    5: "not authorized",
    134: "bad user name or password",
    135: "not authorized",
}


@dataclass(frozen=True, slots=True)
class Message:
    """A received message; `payload` is raw bytes (parse at the edge)."""

    topic: str
    payload: bytes
    retain: bool = False
    qos: int = 0


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


Handler = Callable[[Message], None]


@dataclass(slots=True)
class MqttStats:
    connects: int = 0
    disconnects: int = 0
    received: int = 0
    published: int = 0
    dropped_offline: int = 0
    handler_errors: int = 0


def valid_topic(topic: str) -> bool:
    """A topic one may publish to (MQTT 3.1.1 §4.7.3): not empty, no wildcard, no NUL."""
    return 0 < len(topic.encode("utf-8", "surrogatepass")) <= 65535 and not any(c in topic for c in "+#\x00")


def valid_filter(topic_filter: str) -> bool:
    """A topic filter one may subscribe to (MQTT 3.1.1 §4.7.1): `+` and `#` only as a whole
    level, `#` only last, no NUL."""
    if not 0 < len(topic_filter.encode("utf-8", "surrogatepass")) <= 65535 or "\x00" in topic_filter:
        return False
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic filter matching (MQTT 3.1.1 §4.7), for callers that route by hand."""
    return bool(paho.topic_matches_sub(topic_filter, topic))


class _BufferedSocket:
    """Wraps the connected socket so paho's many tiny `recv`s are served from memory.

    One real `recv` fills the buffer; `buffered` tells the reader to keep calling
    `loop_read` until every complete packet has been handled. Everything else delegates.
    """

    __slots__ = ("_buf", "_pos", "_sock")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, bufsize: int) -> bytes:
        if self._pos >= len(self._buf):
            data: bytes = self._sock.recv(_READ_CHUNK)
            if len(data) <= bufsize:
                return data
            self._buf, self._pos = data, 0
        end = self._pos + bufsize
        chunk = self._buf[self._pos : end]
        self._pos = end
        return chunk

    @property
    def buffered(self) -> bool:
        if self._pos < len(self._buf):
            return True
        pending = getattr(self._sock, "pending", None)
        return bool(pending and pending())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _UnbufferedSocket(_BufferedSocket):
    """The plain way (each paho `recv` is a system call), kept to measure the difference."""

    __slots__ = ()

    def recv(self, bufsize: int) -> bytes:
        data: bytes = self._sock.recv(bufsize)
        return data

    @property
    def buffered(self) -> bool:
        return False


class _PahoClient(paho.Client):
    """paho with the buffered socket. Overrides one private method; a test fails if paho
    changes it (tests/integration/test_mqtt_client.py)."""

    read_buffer = True

    def _create_socket(self) -> Any:
        sock: Any = super()._create_socket()
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # Small publishes must leave now: Nagle plus delayed ACKs adds 40 ms tails.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _BufferedSocket(sock) if self.read_buffer else _UnbufferedSocket(sock)


class MqttClient:
    """A reconnecting MQTT 3.1.1 client for the asyncio loop.

    Use `run()` as a long-lived task; `close()` (or cancelling `run()`) disconnects cleanly.
    `publish()` never blocks: while disconnected, QoS 0 messages are dropped and counted and
    QoS 1 messages wait in paho's queue until the next connect.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        keepalive_s: int = 30,
        connect_timeout_s: float = 5.0,
        reconnect_min_s: float = 0.1,
        reconnect_max_s: float = 2.0,
        will: Will | None = None,
        clean_session: bool = True,
        resend_unacked: bool = True,
        max_inflight: int = _MAX_INFLIGHT,
        read_buffer: bool = True,
        name: str = "mqtt",
    ) -> None:
        self._host = host
        self._port = port
        self._keepalive_s = keepalive_s
        self._connect_timeout_s = connect_timeout_s
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._name = name
        #: False: QoS 1 publishes not acknowledged when the connection drops are dropped and their
        #: futures fail, instead of paho sending them again first thing on the next connection
        #: (for a caller with its own durable resend, which must decide the order).
        self._resend_unacked = resend_unacked
        self._subs: dict[str, tuple[int, list[Handler]]] = {}
        self._connect_hooks: list[Callable[[], None]] = []
        self._acks: dict[int, asyncio.Future[None]] = {}
        self._connected = asyncio.Event()
        self._closing = False
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: _BufferedSocket | None = None
        self._connack: asyncio.Future[int] | None = None
        self._lost: asyncio.Future[str] | None = None
        self._suback: asyncio.Future[None] | None = None
        self._suback_mid = -1
        self.stats = MqttStats()
        #: Why the last connection attempt failed ("" after a success).
        self.last_error = ""
        self._last_error_log = 0.0

        client = _PahoClient(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=paho.MQTTv311,
        )
        client.read_buffer = read_buffer
        client.suppress_exceptions = True
        client.max_inflight_messages_set(max_inflight)
        client.max_queued_messages_set(0)
        if username is not None:
            client.username_pw_set(username, password)
        if tls is not None:
            client.tls_set_context(tls)
        if will is not None:
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        # on_publish is installed only while a QoS 1 publish awaits its PUBACK: paho calls it
        # for every QoS 0 packet written too, with two freshly built objects each time.
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        self._paho = client

    # -- public API --------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout_s: float) -> None:
        """Wait until connected; BrokerError after `timeout_s`."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._connected.wait()
        except TimeoutError as exc:
            raise BrokerError(
                f"{self._name}: no connection to {self._host}:{self._port} after {timeout_s:g} s"
            ) from exc

    def subscribe(self, topic_filter: str, handler: Handler, *, qos: int = 0) -> Callable[[], None]:
        """Call `handler` for every message matching `topic_filter`; returns an unsubscribe.

        Subscriptions survive reconnects. A handler that raises is logged and counted; it
        never breaks the connection.
        """
        if self._closed:
            raise BrokerError(f"{self._name}: client is closed")
        if not valid_filter(topic_filter):
            # Checked before anything is recorded: a filter paho refuses later would break
            # every reconnect.
            raise BrokerError(f"{self._name}: {topic_filter[:200]!r} is not a valid topic filter")
        entry = self._subs.get(topic_filter)
        if entry is None:
            self._subs[topic_filter] = (qos, [handler])
            self._paho.message_callback_add(topic_filter, self._dispatcher(topic_filter))
            if self.connected:
                self._paho.subscribe(topic_filter, qos)
        else:
            entry[1].append(handler)

        def unsubscribe() -> None:
            current = self._subs.get(topic_filter)
            if current is None or handler not in current[1]:
                return
            current[1].remove(handler)
            if not current[1]:
                del self._subs[topic_filter]
                self._paho.message_callback_remove(topic_filter)
                if self.connected:
                    self._paho.unsubscribe(topic_filter)

        return unsubscribe

    def on_connect(self, hook: Callable[[], None]) -> Callable[[], None]:
        """Run `hook` after every (re)connect, once subscriptions are restored."""
        self._connect_hooks.append(hook)
        return lambda: self._connect_hooks.remove(hook) if hook in self._connect_hooks else None

    def publish(self, topic: str, payload: bytes | str, *, qos: int = 0, retain: bool = False) -> bool:
        """Queue a publish without waiting. Returns False if it was dropped (QoS 0, offline).
        BrokerError for a topic that cannot be published to."""
        if not valid_topic(topic):
            raise BrokerError(f"{self._name}: {topic[:200]!r} is not a valid topic to publish to")
        if not self.connected and qos == 0:
            self.stats.dropped_offline += 1
            return False
        info = self._paho.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise BrokerError(f"{self._name}: publish to {topic!r} failed: {paho.error_string(info.rc)}")
        self.stats.published += 1
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or qos > 0

    async def publish_acked(
        self, topic: str, payload: bytes | str, *, retain: bool = False, timeout_s: float = 10.0
    ) -> None:
        """Publish at QoS 1 and wait for the broker's PUBACK; BrokerError on timeout."""
        fut = self._publish_future(topic, payload, retain=retain)
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(fut)
        except TimeoutError as exc:
            raise BrokerError(f"{self._name}: no PUBACK for {topic!r} within {timeout_s:g} s") from exc

    def publish_future(
        self, topic: str, payload: bytes | str, *, retain: bool = False
    ) -> asyncio.Future[None]:
        """Publish at QoS 1; the future completes on PUBACK. For pipelined senders (outbox)."""
        return self._publish_future(topic, payload, retain=retain)

    async def run(self) -> None:
        """Connect and stay connected until `close()` or cancellation."""
        if self._loop is not None:
            raise BrokerError(f"{self._name}: run() called twice")
        self._loop = asyncio.get_running_loop()
        attempt = 0
        try:
            while not self._closing:
                try:
                    await self._connect_once()
                except (OSError, BrokerError, TimeoutError) as exc:
                    self.last_error = str(exc) or type(exc).__name__
                    self._log_connect_error(exc)
                else:
                    self.last_error = ""
                    attempt = 0
                    reason = await self._stay_connected()
                    if not self._closing:
                        log.warning("%s: connection lost (%s); reconnecting", self._name, reason)
                self._teardown()
                if self._closing:
                    break
                cap = min(self._reconnect_max_s, self._reconnect_min_s * 2**attempt)
                attempt += 1
                await asyncio.sleep(random.uniform(self._reconnect_min_s, max(cap, self._reconnect_min_s)))
        finally:
            self._teardown()
            self._closed = True
            for fut in self._acks.values():
                if not fut.done():
                    fut.set_exception(BrokerError(f"{self._name}: client closed"))
            self._acks.clear()

    async def close(self, final: Iterable[tuple[str, bytes, bool]] = ()) -> None:
        """Publish `final` (topic, payload, retain) at QoS 1, then disconnect cleanly.

        Idempotent; waits at most about a second for the broker.
        """
        if self._closing:
            return
        self._closing = True
        if self.connected:
            futures = [self._publish_future(t, p, retain=r) for t, p, r in final]
            if futures:
                with contextlib.suppress(TimeoutError, BrokerError):
                    async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                        await asyncio.gather(*futures)
            self._paho.disconnect()
            if self._lost is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                        await asyncio.shield(self._lost)
        if self._lost is not None and not self._lost.done():
            self._lost.set_result("closed")

    # -- connection ---------------------------------------------------------------------

    async def _connect_once(self) -> None:
        loop = asyncio.get_running_loop()
        self._connack = loop.create_future()
        self._lost = loop.create_future()
        # paho's connect resolves, connects and (for TLS) handshakes with blocking calls.
        async with asyncio.timeout(self._connect_timeout_s):
            await loop.run_in_executor(None, self._blocking_connect)
        async with asyncio.timeout(self._connect_timeout_s):
            rc = await asyncio.shield(self._connack)
        if rc != 0:
            raise BrokerError(
                f"{self._name}: broker {self._host}:{self._port} refused us: "
                f"{_CONNACK_ERRORS.get(rc, f'code {rc}')}"
            )
        await self._restore_subscriptions()
        self.stats.connects += 1
        self._connected.set()
        log.info("%s: connected to %s:%s", self._name, self._host, self._port)
        for hook in list(self._connect_hooks):
            try:
                hook()
            except Exception:  # a hook's bug must not take the connection down
                log.exception("%s: on_connect hook failed", self._name)

    async def _restore_subscriptions(self) -> None:
        """Connected means subscribed: wait for the SUBACK, so that whoever acts on the
        connection (a hello that expects a reply) cannot miss what comes back. Filters added
        or removed meanwhile are caught up before returning."""
        sent: dict[str, int] = {}
        while True:
            want = {f: qos for f, (qos, _) in self._subs.items()}
            gone = [f for f in sent if f not in want]
            if gone:
                self._paho.unsubscribe(gone)
                for f in gone:
                    del sent[f]
            new = [(f, qos) for f, qos in want.items() if sent.get(f) != qos]
            if not new:
                return
            self._suback = asyncio.get_running_loop().create_future()
            rc, mid = self._paho.subscribe(new)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
                raise BrokerError(f"{self._name}: subscribe failed: {paho.error_string(rc)}")
            self._suback_mid = mid
            async with asyncio.timeout(self._connect_timeout_s):
                await self._suback
            sent.update(new)

    def _blocking_connect(self) -> None:
        self._paho.connect(self._host, self._port, keepalive=self._keepalive_s)

    async def _stay_connected(self) -> str:
        assert self._lost is not None
        while True:
            done, _ = await asyncio.wait([self._lost], timeout=_MISC_INTERVAL_S)
            if done:
                return self._lost.result()
            self._paho.loop_misc()

    def _teardown(self) -> None:
        self._connected.clear()
        if not self._resend_unacked:
            for message in self._paho.drop_out_messages():
                fut = self._acks.pop(message.mid, None)
                if fut is not None and not fut.done():
                    fut.set_exception(BrokerError(f"{self._name}: connection lost before the PUBACK"))
        if self._sock is not None:
            # Closing via paho's own path fires on_socket_close, which removes the reader.
            with contextlib.suppress(Exception):
                self._paho._sock_close()
        self._sock = None
        for mid, fut in list(self._acks.items()):
            # QoS 1 messages stay queued in paho and are resent after reconnect; the caller
            # waiting on them times out and decides (the outbox retries on its own).
            if fut.done():
                del self._acks[mid]

    def _log_connect_error(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_error_log > 30:
            self._last_error_log = now
            log.warning(
                "%s: cannot connect to %s:%s: %s (retrying)",
                self._name,
                self._host,
                self._port,
                exc or type(exc).__name__,
            )
        else:
            log.debug("%s: connect failed: %s", self._name, exc)

    # -- paho callbacks (always on the loop thread, except socket_open during connect) ----

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._add_reader, sock)

    def _add_reader(self, sock: _BufferedSocket) -> None:
        self._sock = sock
        with contextlib.suppress(ValueError, OSError):
            assert self._loop is not None
            self._loop.add_reader(sock.fileno(), self._on_readable)

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._loop is None:
            return
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(sock.fileno())
            self._loop.remove_writer(sock.fileno())
        if self._sock is sock:
            self._sock = None

    def _on_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        if self._loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._loop.add_writer(sock.fileno(), self._on_writable)
        else:  # during the blocking connect in the executor thread
            self._loop.call_soon_threadsafe(self._loop.add_writer, sock.fileno(), self._on_writable)

    def _on_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._loop is None:
            return
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_writer(sock.fileno())

    def _on_readable(self) -> None:
        sock = self._sock
        self._paho.loop_read()
        while sock is not None and self._sock is sock and sock.buffered:
            self._paho.loop_read()

    def _on_writable(self) -> None:
        self._paho.loop_write()

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(int(getattr(rc, "value", rc)))

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
        if mid == self._suback_mid and self._suback is not None and not self._suback.done():
            self._suback.set_result(None)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if self._connected.is_set():
            self.stats.disconnects += 1
        self._connected.clear()
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(str(rc))
        if self._suback is not None and not self._suback.done():
            self._suback.set_exception(BrokerError(f"{self._name}: connection lost while subscribing"))

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        fut = self._acks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(None)
        if not self._acks:
            self._paho.on_publish = None

    # -- helpers ------------------------------------------------------------------------

    def _publish_future(self, topic: str, payload: bytes | str, *, retain: bool) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if not valid_topic(topic):
            fut.set_exception(
                BrokerError(f"{self._name}: {topic[:200]!r} is not a valid topic to publish to")
            )
            return fut
        if self._paho.on_publish is None:
            self._paho.on_publish = self._on_publish
        info = self._paho.publish(topic, payload, qos=1, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            fut.set_exception(BrokerError(f"{self._name}: publish failed: {paho.error_string(info.rc)}"))
            return fut
        self.stats.published += 1
        self._acks[info.mid] = fut
        return fut

    def _dispatcher(self, topic_filter: str) -> Callable[[paho.Client, Any, paho.MQTTMessage], None]:
        def dispatch(client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
            entry = self._subs.get(topic_filter)
            if entry is None:
                return
            self.stats.received += 1
            message = Message(msg.topic, bytes(msg.payload), msg.retain, msg.qos)
            for handler in entry[1]:
                try:
                    handler(message)
                except Exception:  # a bad handler must not break the read loop
                    self.stats.handler_errors += 1
                    log.exception("%s: handler for %s failed on %s", self._name, topic_filter, msg.topic)

        return dispatch
