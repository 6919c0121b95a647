"""The gateway's side of the cloud link: one mutually authenticated MQTT session to 北方云.

Down: subscribes (QoS 1, persistent session) to `bfy/v1/all/...`, every prefix of its region
and its own `gw/<id>/down`. Every message must verify against the trust store, be fresh and
not seen before; anything else is dropped, counted, logged and reported up as a security
event. Verified messages go to the handler registered for their type (alerts, services,
commands, ...); `ack`s clear the outbox; `trust.update` rotates operator keys.
Up: everything goes through the durable outbox, critical messages first, and stays there until
the cloud acknowledges it. Presence is retained with a last will. Device telemetry is coalesced
per device and sent at most every `telemetry_interval_s`, so the cloud keeps a shadow of the
home.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from cloud_bridge.identity import Identity
from cloud_bridge.outbox import MessageClass, Outbox, OutboxFull
from cloud_bridge.protocol import (
    Envelope,
    SignatureError,
    TrustedKey,
    check_fresh,
    new_envelope,
    parse_envelope,
    topics,
)
from gateway import __version__
from gateway.mqtt import Message, MqttClient, Will

if TYPE_CHECKING:  # the hub pulls in the ORM; a fleet of simulated links needs none of it
    from gateway.bus import Bus, Event
    from gateway.hub import Hub

__all__ = ["AgentStats", "CloudAgent", "Handler"]

log = logging.getLogger(__name__)

Handler = Callable[[Envelope, str], Awaitable[None]]

_DOWN_QUEUE = 1000
_SEND_WINDOW = 200
_HELLO_RETRY_S = 2.0
_MAX_AGE = {
    "ack": timedelta(days=1),
    "command": timedelta(days=1),
    "trust.update": timedelta(days=30),
}
_DEFAULT_MAX_AGE = timedelta(days=30)
_SECURITY_REPORTS_PER_MIN = 20
# Home events that never go to the operator: command errors echo what was sent, and voice
# events carry what a person said (`voice`) and the answer to it (`voice_reply`); transcripts
# leave the home only with `cloud.share_voice_transcripts`.
_PRIVATE_EVENTS = frozenset({"voice", "voice_reply", "error"})
_TRANSCRIPT_EVENTS = frozenset({"voice", "voice_reply"})


@dataclass(slots=True)
class AgentStats:
    received: int = 0
    accepted: int = 0
    rejected: int = 0
    replays: int = 0
    dropped_down: int = 0
    dropped_events: int = 0
    sent: int = 0
    security_reports: int = 0


class CloudAgent:
    def __init__(
        self,
        identity: Identity,
        outbox: Outbox,
        *,
        hub: Hub | None = None,
        bus: Bus | None = None,
        household: str = "",
        telemetry_interval_s: float = 10.0,
        ack_timeout_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        reconnect_max_s: float = 30.0,
        on_reboot: Callable[[], None] | None = None,
        share_voice_transcripts: bool = False,
    ) -> None:
        self._id = identity
        self._private = _PRIVATE_EVENTS - (_TRANSCRIPT_EVENTS if share_voice_transcripts else frozenset())
        self._outbox = outbox
        self._hub = hub
        self._bus = bus
        self._telemetry_interval_s = telemetry_interval_s
        self._ack_timeout_s = ack_timeout_s
        self._on_reboot = on_reboot
        host, port = identity.mqtt_host_port()
        self.mqtt = MqttClient(
            host=host,
            port=port,
            client_id=identity.gateway_id,
            tls=identity.tls_context(),
            keepalive_s=30,
            connect_timeout_s=connect_timeout_s,
            reconnect_min_s=0.5,
            reconnect_max_s=reconnect_max_s,
            will=Will(topics.presence(identity.gateway_id), b"offline", qos=1, retain=True),
            clean_session=False,  # QoS 1 messages sent while we were away arrive when we return
            # The outbox resends what the cloud has not acknowledged, oldest first. Were paho to
            # resend its own unacknowledged publishes on reconnect, a newer event could overtake
            # an older one that the crashed broker had acknowledged and lost.
            resend_unacked=False,
            name="cloud",
        )
        self._handlers: dict[str, Handler] = {
            "ack": self._on_ack,
            "command": self._on_command,
            "trust.update": self._on_trust_update,
        }
        self._commands: dict[str, Callable[[Mapping[str, Any]], Awaitable[dict[str, Any]]]] = {
            "diagnostics": self._diagnostics,
            "reboot": self._reboot,
        }
        self._down: asyncio.Queue[Message] = asyncio.Queue(_DOWN_QUEUE)
        self._events: asyncio.Queue[Envelope] = asyncio.Queue(_DOWN_QUEUE)
        self._dirty: set[str] = set()
        self._snapshot_due = True
        self._window = asyncio.Semaphore(_SEND_WINDOW)
        self._report_times: list[float] = []
        self._started = time.monotonic()
        self.stats = AgentStats()
        # Set once the cloud has acknowledged this connection's `hello`: the link works end to
        # end and uplinks may flow (cleared at every new connection).
        self.connected = asyncio.Event()
        self._hello_id = ""
        self._new_connection = asyncio.Event()
        self._epoch = 0
        #: More for the diagnostics reply (the daemon adds what its HTTP server refused).
        self.diagnostics_extra: Callable[[], dict[str, Any]] = dict

    # -- wiring ---------------------------------------------------------------------------

    @property
    def gateway_id(self) -> str:
        """This box's id at the cloud (from provisioning; may differ from the local `id`)."""
        return self._id.gateway_id

    @property
    def region(self) -> str:
        return self._id.region

    @property
    def household(self) -> str:
        return self._id.record.household

    def on(self, message_type: str, handler: Handler) -> None:
        """Handle verified downlink messages of `message_type` (alerts, services, ...)."""
        self._handlers[message_type] = handler

    def on_command(
        self, name: str, handler: Callable[[Mapping[str, Any]], Awaitable[dict[str, Any]]]
    ) -> None:
        self._commands[name] = handler

    async def send(self, message_type: str, payload: Mapping[str, Any], cls: MessageClass) -> Envelope:
        """Accept an uplink message: returns once it is on disk (OutboxFull if it cannot be)."""
        envelope = new_envelope(message_type, payload, gateway_id=self._id.gateway_id)
        await self._outbox.put(envelope, cls)
        return envelope

    async def run(self) -> None:
        gw = self._id.gateway_id
        for topic in topics.gateway_subscriptions(gw, self._id.region):
            self.mqtt.subscribe(topic, self._on_message, qos=1)
        self.mqtt.on_connect(self._connected)
        unlisten = self._bus.listen(self._on_bus) if self._bus is not None else None
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.mqtt.run(), name="cloud-mqtt")
                tg.create_task(self._downlink(), name="cloud-downlink")
                tg.create_task(self._uplink(), name="cloud-uplink")
                tg.create_task(self._greet(), name="cloud-hello")
                tg.create_task(self._maintenance(), name="cloud-maintenance")
                tg.create_task(self._home_events(), name="cloud-events")
                if self._hub is not None:
                    tg.create_task(self._telemetry(), name="cloud-telemetry")
        finally:
            if unlisten is not None:
                unlisten()

    async def close(self) -> None:
        """Say goodbye (presence offline) and disconnect."""
        await self.mqtt.close(final=[(topics.presence(self._id.gateway_id), b"offline", True)])

    def _connected(self) -> None:
        self.connected.clear()
        self._epoch += 1
        self._new_connection.set()
        self.mqtt.publish(topics.presence(self._id.gateway_id), b"online", qos=1, retain=True)
        self._hello()
        resent = self._outbox.requeue_in_flight()
        self._snapshot_due = True
        log.info(
            "cloud link up (%s); %d messages waiting, %d to resend once the cloud answers",
            self._id.record.mqtt_url,
            self._outbox.waiting,
            resent,
        )

    def _hello(self) -> None:
        hello = new_envelope(
            "hello",
            {
                "version": __version__,
                "region": self._id.region,
                "household": self._id.record.household,
                "devices": len(self._hub.devices()) if self._hub is not None else 0,
            },
            gateway_id=self._id.gateway_id,
        )
        self._hello_id = hello.id
        self.mqtt.publish(topics.up(self._id.gateway_id), hello.to_bytes(), qos=1)

    async def _greet(self) -> None:
        """Uplinks wait for the cloud's ack of `hello`. After a broker restart the broker has
        forgotten the cloud's session: what a gateway sends before the cloud has subscribed
        again is dropped, and resending it after an ack timeout would put it behind newer
        messages. A hello that goes unanswered is sent again."""
        while True:
            await self._new_connection.wait()
            self._new_connection.clear()
            while not self.connected.is_set() and not self._new_connection.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_HELLO_RETRY_S):
                        await self.connected.wait()
                if not self.connected.is_set() and not self._new_connection.is_set() and self.mqtt.connected:
                    self._hello()

    # -- uplink ---------------------------------------------------------------------------

    async def _uplink(self) -> None:
        up = topics.up(self._id.gateway_id)
        while True:
            await self.connected.wait()
            await self._outbox.wait_ready()
            epoch = self._epoch
            batch = await self._outbox.take(50)
            for k, pending in enumerate(batch):
                await self._window.acquire()
                if self._epoch != epoch or not self.mqtt.connected:
                    # The link went down meanwhile: the rest of the batch goes back in line,
                    # before anything newer, for the next confirmed connection.
                    self._window.release()
                    self._outbox.put_back(batch[k:])
                    break
                fut = self.mqtt.publish_future(up, pending.body)
                fut.add_done_callback(self._release)
                self.stats.sent += 1

    def _release(self, fut: asyncio.Future[None]) -> None:
        self._window.release()
        if not fut.cancelled():
            fut.exception()  # retrieved: a failed PUBACK is handled by the ack timeout

    async def _maintenance(self) -> None:
        while True:
            await asyncio.sleep(min(10.0, self._ack_timeout_s / 2))
            self._outbox.requeue_in_flight(older_than_s=self._ack_timeout_s)
            await self._outbox.purge_expired()

    # -- telemetry ------------------------------------------------------------------------

    def _on_bus(self, event: Event) -> None:
        if event.kind in ("info", "state", "availability", "removed"):
            self._dirty.add(event.device_id)
        elif event.kind == "event" and event.device_id not in self._private:
            payload = {"kind": event.device_id, **event.data}
            envelope = new_envelope("event", payload, gateway_id=self._id.gateway_id)
            if self._events.full():  # drop the oldest: the outbox keeps up unless the disk is failing
                self._events.get_nowait()
                self.stats.dropped_events += 1
            self._events.put_nowait(envelope)

    async def _home_events(self) -> None:
        """Home events from the bus into the outbox (the bus listener itself cannot wait)."""
        while True:
            envelope = await self._events.get()
            try:
                await self._outbox.put(envelope, MessageClass.EVENT)
            except OutboxFull:
                log.error("outbox full; home event %s not kept", envelope.id)

    async def _telemetry(self) -> None:
        assert self._hub is not None
        hub = self._hub
        while True:
            await asyncio.sleep(self._telemetry_interval_s)
            if self._snapshot_due:
                self._snapshot_due = False
                self._dirty.update(d.info.id for d in hub.devices(approved=True))
            if not self._dirty:
                continue
            dirty, self._dirty = self._dirty, set()
            devices: dict[str, Any] = {}
            removed = []
            for dev_id in sorted(dirty):
                dev = hub.get(dev_id)
                if dev is None or not dev.row.approved:
                    removed.append(dev_id)
                    continue
                devices[dev_id] = {
                    "info": dev.info.model_dump(mode="json"),
                    "state": dev.state_payload() if dev.state else {},
                    "online": dev.online,
                }
            payload: dict[str, Any] = {"devices": devices}
            if removed:
                payload["removed"] = removed
            await self.send("telemetry", payload, MessageClass.TELEMETRY)

    # -- downlink -------------------------------------------------------------------------

    def _on_message(self, msg: Message) -> None:
        self.stats.received += 1
        try:
            self._down.put_nowait(msg)
        except asyncio.QueueFull:
            self.stats.dropped_down += 1

    async def _downlink(self) -> None:
        while True:
            msg = await self._down.get()
            try:
                envelope = parse_envelope(msg.payload)
                self._id.trust.verify(envelope)
                check_fresh(envelope, max_age=_MAX_AGE.get(envelope.type, _DEFAULT_MAX_AGE))
                remembered = envelope.type != "ack"
                if remembered and await self._outbox.has_seen(envelope.id):
                    self.stats.replays += 1
                    raise SignatureError("replay", envelope.id)
            except SignatureError as exc:
                await self._security(exc, msg)
                continue
            self.stats.accepted += 1
            # A command runs at most once: remembered before it runs. Everything else is
            # remembered after its handler has kept it (handlers are idempotent), so a crash in
            # between means it is handled again on redelivery instead of lost.
            if envelope.type == "command":
                await self._outbox.mark_seen(envelope.id)
            handler = self._handlers.get(envelope.type)
            if handler is None:
                log.info("cloud: no handler for %s messages; ignored", envelope.type)
            else:
                try:
                    await handler(envelope, msg.topic)
                except Exception:  # a handler's bug must not stop the link
                    log.exception("cloud: handler for %s failed", envelope.type)
                    continue
            if remembered and envelope.type != "command":
                await self._outbox.mark_seen(envelope.id)

    async def _security(self, exc: SignatureError, msg: Message) -> None:
        """Drop, count, log, and (rate-limited) report up as a security event."""
        if exc.reason != "replay":
            self.stats.rejected += 1
        now = time.monotonic()
        self._report_times = [t for t in self._report_times if now - t < 60]
        level = logging.INFO if exc.reason == "replay" else logging.WARNING
        if len(self._report_times) >= _SECURITY_REPORTS_PER_MIN:
            log.debug("cloud: dropped %s (%s); reports rate-limited", msg.topic, exc)
            return
        self._report_times.append(now)
        log.log(level, "cloud: dropped a message on %s: %s", msg.topic, exc)
        report: dict[str, Any] = {"reason": exc.reason, "topic": msg.topic, "detail": exc.detail[:200]}
        with contextlib.suppress(SignatureError):
            envelope = parse_envelope(msg.payload)
            report.update(type=envelope.type, id=envelope.id, kid=envelope.kid)
        self.stats.security_reports += 1
        try:
            await self.send("security", report, MessageClass.CRITICAL)
        except OutboxFull:
            log.error("outbox full; security event not kept")

    async def _on_ack(self, envelope: Envelope, topic: str) -> None:
        ids = envelope.payload.get("ids")
        if isinstance(ids, list):
            if self._hello_id in ids and not self.connected.is_set():
                self.connected.set()
                log.info("cloud link confirmed end to end; %d messages to send", self._outbox.waiting)
            await self._outbox.ack(str(i) for i in ids[:10_000])

    async def _on_trust_update(self, envelope: Envelope, topic: str) -> None:
        """Key rotation: add and remove operator keys (signed by a key we already trust)."""
        add = envelope.payload.get("add", [])
        remove = envelope.payload.get("remove", [])
        if not isinstance(add, list) or not isinstance(remove, list):
            log.warning("cloud: malformed trust.update %s", envelope.id)
            return
        for raw in add:
            try:
                self._id.trust.add(TrustedKey.model_validate(raw))
            except Exception as exc:  # noqa: BLE001 - a bad entry is skipped, the rest applies
                log.warning("cloud: trust.update %s: bad key: %s", envelope.id, exc)
        for kid in remove:
            if kid != envelope.kid:  # never remove the key that signed this very update
                self._id.trust.remove(str(kid))
        await asyncio.to_thread(self._id.save_trust)
        log.info("cloud: trust store now has %d keys", len(self._id.trust))

    async def _on_command(self, envelope: Envelope, topic: str) -> None:
        name = envelope.payload.get("name")
        args = envelope.payload.get("args") or {}
        handler = self._commands.get(str(name))
        reply: dict[str, Any] = {"command_id": envelope.id, "name": name}
        if handler is None or not isinstance(args, dict):
            reply.update(ok=False, error=f"unknown command {name!r}")
        else:
            try:
                reply.update(ok=True, result=await handler(args))
            except Exception as exc:  # noqa: BLE001 - the operator gets the reason
                reply.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:500])
        await self.send("reply", reply, MessageClass.CRITICAL)

    async def _diagnostics(self, args: Mapping[str, Any]) -> dict[str, Any]:
        hub = self._hub
        return {
            "version": __version__,
            "uptime_s": round(time.monotonic() - self._started),
            "region": self._id.region,
            "devices": len(hub.devices()) if hub else 0,
            "pending_devices": len(hub.devices(approved=False)) if hub else 0,
            "online_devices": sum(d.online for d in hub.devices()) if hub else 0,
            "outbox": {
                "messages": len(self._outbox),
                "waiting": self._outbox.waiting,
                **asdict(self._outbox.stats),
            },
            "link": {**asdict(self.stats), **asdict(self.mqtt.stats)},
            "trust_keys": len(self._id.trust),
            # What the home network sent that the box refused: drops, rejects and impostors by
            # adapter and reason.
            "lan_drops": hub.drop_counts() if hub else {},
            **self.diagnostics_extra(),
        }

    async def _reboot(self, args: Mapping[str, Any]) -> dict[str, Any]:
        if self._on_reboot is None:
            raise RuntimeError("reboot is not available here")
        asyncio.get_running_loop().call_later(1.0, self._on_reboot)  # after the reply is on disk
        return {"rebooting_in_s": 1}
