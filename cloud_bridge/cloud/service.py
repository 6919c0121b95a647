"""The cloud's MQTT side (Contract 3): uplinks in, signed downlinks out.

Uplinks (`bfy/v1/gw/+/up`) and presence (`bfy/v1/gw/+/presence`) are parsed in the MQTT read
callback and queued; one writer task stores whatever has queued up in one transaction (group
commit), applies their effects (device shadows, versions, command replies, security events) in
the same transaction, and only then acks every uplink of the batch, duplicates included, with
one signed `ack` per gateway (≤ 1000 ids each). The broker's PUBACK to the gateway means
nothing here: an uplink counts as delivered when the gateway holds our ack.

Overflow policy: the queue holds `queue_size` items; beyond that an uplink is dropped and
counted, and since it is never acked the gateway's outbox sends it again.

Everything with operator authority goes out through `publish_signed`, signed with the current
key of the `KeyRing`; rotating keys announces the new key with a `trust.update` signed by the
old one.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from cloud_bridge.ca import write_private
from cloud_bridge.cloud.db import (
    Batch,
    CloudDB,
    CloudDBError,
    NewUplink,
    PushRow,
    ReceiptRow,
    SecurityEventRow,
    ShadowRow,
)
from cloud_bridge.cloud.govservice import GovDesk, mask_query
from cloud_bridge.cloud.shop import ShopDesk, UplinkHandler
from cloud_bridge.protocol import (
    BridgeError,
    Envelope,
    SignatureError,
    Signer,
    TrustedKey,
    new_envelope,
    parse_envelope,
    parse_ts,
    topics,
    utc_now,
)
from gateway.errors import BrokerError
from gateway.mqtt import Message, MqttClient

__all__ = [
    "ACK_MAX_IDS",
    "CloudService",
    "CloudUnavailable",
    "CommandOutcome",
    "KeyRing",
    "KeyRingError",
    "Rotation",
    "ServiceStats",
    "SigningKey",
]

log = logging.getLogger(__name__)

ACK_MAX_IDS = 1000
UPLINK_FILTER = "bfy/v1/gw/+/up"
PRESENCE_FILTER = "bfy/v1/gw/+/presence"
_QUEUE_SIZE = 100_000
_MAX_BATCH = 2000
_PUBLISH_TIMEOUT_S = 10.0
_PEER_LOG_INTERVAL_S = 60.0
_TOPIC = re.compile(r"^bfy/v1/gw/([a-z0-9][a-z0-9_-]{0,47})/(up|presence)$")
_MAX_DEVICE_ID = 128
_MAX_SEQ = 2**63 - 1


class CloudUnavailable(BridgeError):
    """A downlink could not be handed to the broker (not connected, or no PUBACK in time)."""


class KeyRingError(BridgeError):
    """The signing keys in the data directory cannot be used."""


# -- signing keys --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SigningKey:
    n: int
    signer: Signer
    retired: bool = False

    @property
    def kid(self) -> str:
        return self.signer.kid

    @property
    def trusted(self) -> TrustedKey:
        return TrustedKey(kid=self.signer.kid, public_key=self.signer.public_key_b64())


class KeyRing:
    """Ed25519 signing keys in `<dir>/<n>.key` (PKCS#8 PEM, 0600).

    Every key without a `<n>.retired` marker next to it is trusted; the newest of them signs.
    `open`/`create_next` touch files: call them from a thread.
    """

    def __init__(self, directory: Path, keys: dict[int, SigningKey]) -> None:
        self.dir = directory
        self._keys = keys
        active = [k.n for k in keys.values() if not k.retired]
        if not active:
            raise KeyRingError(f"no usable signing key in {directory}")
        self._current = max(active)

    @classmethod
    def open(cls, directory: Path) -> KeyRing:
        """Load the keys, creating the first one on first start."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        keys: dict[int, SigningKey] = {}
        for path in sorted(directory.glob("*.key")):
            if not path.stem.isdigit():
                continue
            n = int(path.stem)
            try:
                key = load_pem_private_key(path.read_bytes(), password=None)
            except (ValueError, TypeError) as exc:
                raise KeyRingError(f"{path} is not a PEM private key: {exc}") from exc
            if not isinstance(key, Ed25519PrivateKey):
                raise KeyRingError(f"{path} is not an Ed25519 key")
            keys[n] = SigningKey(n, Signer(key), retired=(directory / f"{n}.retired").exists())
        if not any(not k.retired for k in keys.values()):
            new = _write_key(directory, max(keys, default=0) + 1)
            keys[new.n] = new
            log.info("created signing key %s (%s)", new.n, new.kid)
        return cls(directory, keys)

    @property
    def current(self) -> SigningKey:
        return self._keys[self._current]

    def get(self, n: int) -> SigningKey | None:
        return self._keys.get(n)

    @property
    def active(self) -> list[SigningKey]:
        return sorted((k for k in self._keys.values() if not k.retired), key=lambda k: k.n)

    @property
    def all(self) -> list[SigningKey]:
        return sorted(self._keys.values(), key=lambda k: k.n)

    def trusted(self, *, newer_than: int = 0) -> list[TrustedKey]:
        return [k.trusted for k in self.active if k.n > newer_than]

    def create_next(self) -> SigningKey:
        """Write a new key. It signs only after `activate` (and after any restart)."""
        key = _write_key(self.dir, max(self._keys) + 1)
        self._keys[key.n] = key
        return key

    def discard(self, n: int) -> None:
        """Remove a key that never signed (a rotation that could not be announced)."""
        if n == self._current:
            raise KeyRingError("the current signing key cannot be discarded")
        self._keys.pop(n, None)
        (self.dir / f"{n}.key").unlink(missing_ok=True)

    def activate(self, n: int) -> None:
        key = self._keys[n]
        if key.retired:
            raise KeyRingError(f"signing key {n} is retired")
        self._current = n


def _write_key(directory: Path, n: int) -> SigningKey:
    key = Ed25519PrivateKey.generate()
    write_private(
        directory / f"{n}.key", key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    )
    return SigningKey(n, Signer(key))


# -- queue items -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Up:
    gateway_id: str
    envelope: Envelope
    received_at: datetime


@dataclass(frozen=True, slots=True)
class _Presence:
    gateway_id: str
    online: bool
    at: datetime


@dataclass(frozen=True, slots=True)
class _Violation:
    """Something a gateway sent that is not stored as an uplink. `ack_id`: an envelope that can
    never be stored is still acked, or the gateway's outbox would send it forever."""

    event: SecurityEventRow
    ack_id: str | None = None

    @property
    def gateway_id(self) -> str:
        return self.event.gateway_id or ""


_Item = _Up | _Presence | _Violation


@dataclass(slots=True)
class _Outcome:
    acks: dict[str, list[str]] = field(default_factory=dict)
    replies: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    trust_n: dict[str, int] = field(default_factory=dict)
    online: set[str] = field(default_factory=set)  # gateways whose presence just said online
    receipts: list[ReceiptRow] = field(default_factory=list)
    downs: list[tuple[str, Envelope]] = field(default_factory=list)  # to sign and send after commit


@dataclass(slots=True)
class ServiceStats:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    acked: int = 0
    acks_sent: int = 0
    batches: int = 0
    dropped_overflow: int = 0
    dropped_malformed: int = 0
    dropped_mismatch: int = 0
    dropped_db_error: int = 0
    bad_telemetry: int = 0


CommandStatus = Literal["ok", "error", "timeout"]


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    command_id: str
    status: CommandStatus
    result: Any = None
    error: Any = None


@dataclass(frozen=True, slots=True)
class Rotation:
    kid: str
    previous_kid: str
    envelope_id: str
    notified: list[str]


class _PeerLog:
    """WARNING once per key per interval, DEBUG in between (a misbehaving peer must not flood)."""

    def __init__(self, interval_s: float = _PEER_LOG_INTERVAL_S) -> None:
        self._interval_s = interval_s
        self._last: dict[tuple[str, str], float] = {}

    def warn(self, key: tuple[str, str], msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -self._interval_s) >= self._interval_s:
            self._last[key] = now
            log.warning(msg, *args)
        else:
            log.debug(msg, *args)


def _json_safe(value: Any) -> Any:
    """PostgreSQL's JSON cannot hold NUL characters; a peer's NULs become U+FFFD."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_json_safe(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


class CloudService:
    """The MQTT side of the reference cloud. `attach()`, then run `run_writer()` as a task."""

    def __init__(
        self,
        db: CloudDB,
        mqtt: MqttClient,
        keys: KeyRing,
        *,
        queue_size: int = _QUEUE_SIZE,
        ack_max_ids: int = ACK_MAX_IDS,
    ) -> None:
        self._db = db
        self._mqtt = mqtt
        self.keys = keys
        self._ack_max_ids = ack_max_ids
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(queue_size)
        self._idle = asyncio.Event()
        self._idle.set()
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._rotate_lock = asyncio.Lock()
        self._unsubscribe: list[Callable[[], None]] = []
        self._peer_log = _PeerLog()
        self.stats = ServiceStats()
        #: Called after every commit with (gateways that came online, receipts stored).
        self.listeners: list[Callable[[set[str], list[ReceiptRow]], None]] = []
        #: Service back ends: uplinks they handle inside the group commit, replies after it.
        self.shop = ShopDesk(db, self)
        self.gov = GovDesk(db)
        self._uplink_handlers: dict[str, UplinkHandler] = {**self.shop.handlers(), **self.gov.handlers()}

    # -- inbound ----------------------------------------------------------------------------

    def attach(self) -> None:
        self._unsubscribe = [
            self._mqtt.subscribe(UPLINK_FILTER, self._on_uplink, qos=1),
            self._mqtt.subscribe(PRESENCE_FILTER, self._on_presence, qos=1),
        ]

    def detach(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []

    def _enqueue(self, item: _Item) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.stats.dropped_overflow += 1
            self._peer_log.warn(
                ("overflow", ""),
                "uplink queue full: dropped a message from %s (resent later)",
                item.gateway_id,
            )
            return
        self._idle.clear()

    def _violation(
        self,
        gateway_id: str,
        reason: str,
        detail: str,
        envelope_id: str | None,
        at: datetime,
        *,
        ack: bool = False,
    ) -> None:
        self._peer_log.warn((gateway_id, reason), "gateway %s: %s (%s); dropped", gateway_id, reason, detail)
        event = SecurityEventRow(at, gateway_id, "cloud", reason, detail, envelope_id)
        self._enqueue(_Violation(event, envelope_id if ack else None))

    def _on_uplink(self, msg: Message) -> None:
        self.stats.received += 1
        now = utc_now()
        match = _TOPIC.match(msg.topic)
        if match is None:
            self.stats.dropped_malformed += 1
            self._peer_log.warn(("", "topic"), "uplink on unexpected topic %r dropped", msg.topic[:120])
            return
        gateway_id = match.group(1)
        try:
            envelope = parse_envelope(msg.payload)
        except SignatureError as exc:
            self.stats.dropped_malformed += 1
            self._violation(gateway_id, "malformed", exc.detail, None, now)
            return
        if envelope.gateway_id != gateway_id:
            # The broker's ACL already keeps a gateway on its own topic; a gateway that names
            # another one inside its own envelope is lying or broken.
            self.stats.dropped_mismatch += 1
            self._violation(
                gateway_id, "gateway_id_mismatch", f"envelope names {envelope.gateway_id!r}", envelope.id, now
            )
            return
        if b"\\u0000" in msg.payload:
            envelope = envelope.model_copy(update={"payload": _json_safe(envelope.payload)})
        try:
            orjson.dumps(envelope.payload)
        except orjson.JSONEncodeError as exc:  # integers beyond 64 bits: no database stores them
            self.stats.dropped_malformed += 1
            self._violation(gateway_id, "unstorable", str(exc), envelope.id, now, ack=True)
            return
        self._enqueue(_Up(gateway_id, envelope, now))

    def _on_presence(self, msg: Message) -> None:
        match = _TOPIC.match(msg.topic)
        if match is None:
            return
        gateway_id = match.group(1)
        state = msg.payload.strip()
        if state not in (b"online", b"offline"):
            if state:  # an empty retained payload only clears the topic
                self._peer_log.warn(
                    (gateway_id, "presence"), "gateway %s: presence %r ignored", gateway_id, state[:20]
                )
            return
        self._enqueue(_Presence(gateway_id, state == b"online", utc_now()))

    # -- the writer ---------------------------------------------------------------------------

    async def run_writer(self) -> None:
        """Group commit forever: take everything queued (up to a bound), store, then ack."""
        while True:
            item = await self._queue.get()
            batch = [item]
            while len(batch) < _MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._store(batch)
            if self._queue.empty():
                self._idle.set()

    async def drain(self, timeout_s: float) -> bool:
        """Wait until everything queued is stored (for a clean stop). False on timeout."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def _store(self, batch: list[_Item]) -> None:
        try:
            outcome = await self._commit(batch)
        except CloudDBError as exc:
            if len(batch) == 1:
                self.stats.dropped_db_error += 1
                self._peer_log.warn(
                    ("db", ""), "could not store an uplink (not acked; resent later): %s", exc
                )
                return
            # One bad row must not cost the whole batch: store one by one.
            log.warning("batch of %d not stored (%s); storing one by one", len(batch), exc)
            for item in batch:
                await self._store([item])
            return
        self.stats.batches += 1
        self._after_commit(outcome)
        if outcome.trust_n:
            await self._trust_catch_up(outcome.trust_n)

    async def _commit(self, batch: Sequence[_Item]) -> _Outcome:
        out = _Outcome()
        ups = [i for i in batch if isinstance(i, _Up)]
        async with self._db.batch() as tx:
            fresh = await tx.insert_uplinks([_record(u) for u in ups])
            fresh_ids = {u.envelope_id for u in fresh}
            events: list[SecurityEventRow] = []
            seen: dict[str, datetime] = {}
            presence: dict[str, _Presence] = {}
            hellos: set[str] = set()
            telemetry: list[_Up] = []
            for item in batch:
                if isinstance(item, _Violation):
                    events.append(item.event)
                    if item.ack_id is not None:
                        out.acks.setdefault(item.gateway_id, []).append(item.ack_id)
                    continue
                if isinstance(item, _Presence):
                    presence[item.gateway_id] = item
                    continue
                env = item.envelope
                out.acks.setdefault(item.gateway_id, []).append(env.id)
                seen[item.gateway_id] = item.received_at
                if env.id not in fresh_ids:
                    continue
                fresh_ids.discard(env.id)  # effects once, even if the batch holds it twice
                if env.type == "telemetry":
                    telemetry.append(item)
                elif env.type == "hello":
                    hellos.add(item.gateway_id)
                    version = env.payload.get("version")
                    if isinstance(version, str):
                        await tx.set_version(item.gateway_id, version)
                elif env.type == "reply":
                    await self._reply(tx, item, out)
                elif env.type == "security":
                    events.append(_security_event(item))
                elif env.type == "receipt":
                    receipt = _receipt(item)
                    if receipt is not None:
                        out.receipts.append(receipt)
                elif (handler := self._uplink_handlers.get(env.type)) is not None:
                    try:
                        await handler(tx, item.gateway_id, env, out.downs)
                    except (ValueError, TypeError, KeyError):  # a back end's bug; DB errors fail the batch
                        log.exception("gateway %s: %s %s not handled", item.gateway_id, env.type, env.id)
            await self._merge_telemetry(tx, telemetry)
            await tx.add_security_events(events)
            await tx.add_receipts(out.receipts)
            await tx.seen(seen)
            for p in presence.values():
                await tx.presence(p.gateway_id, online=p.online, at=p.at)
                if p.online:
                    out.online.add(p.gateway_id)
            if hellos and len(self.keys.active) > 1:
                stale = await tx.trust_n(hellos)
                out.trust_n = {gw: n for gw, n in stale.items() if n < self.keys.current.n}
        self.stats.stored += len(fresh)
        self.stats.duplicates += len(ups) - len(fresh)
        return out

    async def _reply(self, tx: Batch, item: _Up, out: _Outcome) -> None:
        payload = item.envelope.payload
        command_id = payload.get("command_id")
        if not isinstance(command_id, str):
            return
        ok = payload.get("ok") is True
        found = await tx.finish_command(
            command_id,
            status="ok" if ok else "error",
            result=payload.get("result"),
            error=payload.get("error"),
            at=item.received_at,
        )
        if found:
            out.replies.append((command_id, payload))

    async def _merge_telemetry(self, tx: Batch, items: Sequence[_Up]) -> None:
        """Merge `telemetry` into per-device shadows, in arrival order: `info` and `online`
        replace, `state` is merged key by key, `removed` deletes the shadow."""
        by_gateway: dict[str, list[_Up]] = {}
        for item in items:
            by_gateway.setdefault(item.gateway_id, []).append(item)
        for gateway_id, ups in by_gateway.items():
            wanted: set[str] = set()
            for up in ups:
                devices = up.envelope.payload.get("devices")
                if isinstance(devices, dict):
                    wanted.update(d for d in devices if isinstance(d, str))
            current: dict[str, ShadowRow | None] = dict(await tx.shadows(gateway_id, wanted))
            changed: set[str] = set()
            for up in ups:
                self._apply_telemetry(gateway_id, up, current, changed)
            await tx.delete_shadows(gateway_id, [d for d in changed if current.get(d) is None])
            await tx.save_shadows([row for d in sorted(changed) if (row := current.get(d)) is not None])

    def _apply_telemetry(
        self, gateway_id: str, up: _Up, current: dict[str, ShadowRow | None], changed: set[str]
    ) -> None:
        payload = up.envelope.payload
        at = up.envelope.timestamp
        devices = payload.get("devices", {})
        removed = payload.get("removed", [])
        if not isinstance(devices, dict) or not isinstance(removed, list):
            self.stats.bad_telemetry += 1
            self._peer_log.warn(
                (gateway_id, "telemetry"), "gateway %s: telemetry without a devices map", gateway_id
            )
            return
        for device_id, entry in devices.items():
            if not (isinstance(entry, dict) and 0 < len(device_id) <= _MAX_DEVICE_ID):
                self.stats.bad_telemetry += 1
                continue
            old = current.get(device_id)
            info = entry.get("info")
            state = entry.get("state")
            online = entry.get("online")
            current[device_id] = ShadowRow(
                gateway_id=gateway_id,
                device_id=device_id,
                info=info if isinstance(info, dict) else (old.info if old else None),
                state={**(old.state if old else {}), **(state if isinstance(state, dict) else {})},
                online=online if isinstance(online, bool) else (old.online if old else None),
                updated_at=at,
            )
            changed.add(device_id)
        for device_id in removed:
            if isinstance(device_id, str) and 0 < len(device_id) <= _MAX_DEVICE_ID:
                current[device_id] = None
                changed.add(device_id)

    def _after_commit(self, out: _Outcome) -> None:
        for gateway_id, ids in out.acks.items():
            for start in range(0, len(ids), self._ack_max_ids):
                chunk = ids[start : start + self._ack_max_ids]
                ack = new_envelope("ack", {"ids": chunk}, gateway_id=gateway_id)
                self._publish_nowait(topics.down(gateway_id), self.sign(ack))
                self.stats.acks_sent += 1
                self.stats.acked += len(chunk)
        for gateway_id, envelope in out.downs:
            self._publish_nowait(topics.down(gateway_id), self.sign(envelope))
        for command_id, payload in out.replies:
            fut = self._pending.get(command_id)
            if fut is not None and not fut.done():
                fut.set_result(payload)
        for listener in self.listeners:
            try:
                listener(out.online, out.receipts)
            except Exception:  # a listener's bug must not stop the writer
                log.exception("cloud listener failed")

    async def _trust_catch_up(self, stale: dict[str, int]) -> None:
        """A gateway that missed a rotation (offline at the time) gets the keys it lacks at its
        next `hello`, signed with the newest key it already trusts."""
        current = self.keys.current.n
        for gateway_id, n in stale.items():
            known = self.keys.get(n)
            if known is None or known.retired:
                log.warning(
                    "gateway %s trusts no current signing key (it knows key %d); re-provision it",
                    gateway_id,
                    n,
                )
                continue
            add = [k.model_dump(mode="json", exclude_none=True) for k in self.keys.trusted(newer_than=n)]
            update = known.signer.sign(new_envelope("trust.update", {"add": add, "remove": []}))
            self._publish_nowait(topics.down(gateway_id), update)
            log.info("gateway %s: sent the signing keys it missed (%d)", gateway_id, len(add))
        try:
            await self._db.set_trust_n(stale, current)
        except CloudDBError as exc:
            log.error("cannot record trust updates: %s", exc)

    # -- outbound ------------------------------------------------------------------------------

    def sign(self, envelope: Envelope) -> Envelope:
        return self.keys.current.signer.sign(envelope)

    def _publish_nowait(self, topic: str, envelope: Envelope) -> None:
        try:
            self._mqtt.publish(topic, envelope.to_bytes(), qos=1)
        except BrokerError as exc:
            log.warning("cannot publish %s to %s: %s", envelope.type, topic, exc)

    def _require_connected(self) -> None:
        if not self._mqtt.connected:
            raise CloudUnavailable("the cloud is not connected to its MQTT broker; try again shortly")

    async def publish_signed(
        self, topic: str, envelope: Envelope, *, retain: bool = False, timeout_s: float = _PUBLISH_TIMEOUT_S
    ) -> Envelope:
        """Sign with the current key (unless already signed) and publish at QoS 1; returns the
        signed envelope once the broker has it (PUBACK). CloudUnavailable otherwise."""
        return await self.publish_signed_many([topic], envelope, retain=retain, timeout_s=timeout_s)

    async def publish_signed_many(
        self,
        topic_list: Iterable[str],
        envelope: Envelope,
        *,
        retain: bool = False,
        timeout_s: float = _PUBLISH_TIMEOUT_S,
    ) -> Envelope:
        """One signature, one publish per topic (fan-out to regions is the broker's job)."""
        self._require_connected()
        signed = self.sign(envelope) if envelope.sig is None else envelope
        data = signed.to_bytes()
        futures = [self._mqtt.publish_future(t, data, retain=retain) for t in topic_list]
        if futures:
            try:
                async with asyncio.timeout(timeout_s):
                    await asyncio.gather(*futures)
            except (TimeoutError, BrokerError) as exc:
                raise CloudUnavailable(
                    f"the broker did not take the {signed.type} message: {exc or 'no PUBACK in time'}"
                ) from exc
        return signed

    async def command(
        self, gateway_id: str, name: str, args: dict[str, Any], *, timeout_s: float
    ) -> CommandOutcome:
        """Send a signed command and wait for the gateway's reply (`reply.command_id`)."""
        self._require_connected()
        envelope = new_envelope("command", {"name": name, "args": args}, gateway_id=gateway_id)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[envelope.id] = fut
        try:
            await self._db.create_command(
                command_id=envelope.id, gateway_id=gateway_id, name=name, args=args, created_at=utc_now()
            )
            try:
                await self.publish_signed(topics.down(gateway_id), envelope)
            except CloudUnavailable:
                await self._db.timeout_command(envelope.id)
                raise
            try:
                async with asyncio.timeout(timeout_s):
                    reply = await fut
            except TimeoutError:
                await self._db.timeout_command(envelope.id)
                return CommandOutcome(envelope.id, "timeout")
        finally:
            self._pending.pop(envelope.id, None)
        ok = reply.get("ok") is True
        return CommandOutcome(envelope.id, "ok" if ok else "error", reply.get("result"), reply.get("error"))

    async def push_service(self, target: dict[str, Any], service: dict[str, Any]) -> PushRow:
        """One signed `service` envelope, published once per target topic; stored."""
        if target.get("all"):
            topic_list = [topics.ALL_SERVICE]
        elif target.get("regions"):
            topic_list = [topics.region(code, "service") for code in dict.fromkeys(target["regions"])]
        else:
            topic_list = [topics.down(gw) for gw in dict.fromkeys(target.get("gateways") or [])]
        signed = await self.publish_signed_many(topic_list, new_envelope("service", service))
        row = PushRow(signed.id, target, service, topic_list, signed.kid or "", utc_now())
        await self._db.add_push(row)
        log.info("service push %s (%s) to %d topics", signed.id, service.get("service_id"), len(topic_list))
        return row

    async def rotate_keys(self) -> Rotation:
        """New signing key: announce it to every known gateway with a `trust.update` signed by
        the old key, then sign with the new one."""
        async with self._rotate_lock:
            self._require_connected()
            old = self.keys.current
            new = await asyncio.to_thread(self.keys.create_next)
            update = old.signer.sign(
                new_envelope(
                    "trust.update",
                    {"add": [new.trusted.model_dump(mode="json", exclude_none=True)], "remove": []},
                )
            )
            gateways = await self._db.gateway_presence()
            try:
                await self.publish_signed_many([topics.down(gw) for gw, _ in gateways], update)
            except CloudUnavailable:
                # Never signed anything: forget it, so a restart does not start signing with it.
                await asyncio.to_thread(self.keys.discard, new.n)
                raise
            self.keys.activate(new.n)
            # Offline gateways get the key at their next hello (`_trust_catch_up`).
            await self._db.set_trust_n([gw for gw, online in gateways if online], new.n)
            log.info("signing key rotated: %s → %s (%d gateways told)", old.kid, new.kid, len(gateways))
            return Rotation(new.kid, old.kid, update.id, [gw for gw, _ in gateways])


def _record(up: _Up) -> NewUplink:
    env = up.envelope
    payload = env.payload
    if env.type == "gov.query":  # personal data (ID numbers) is used for the reply, never stored
        payload = mask_query(payload)
    device = payload.get("device")
    seq = payload.get("seq")
    return NewUplink(
        envelope_id=env.id,
        gateway_id=up.gateway_id,
        type=env.type,
        ts=parse_ts(env.ts),
        received_at=up.received_at,
        device=device if isinstance(device, str) and len(device) <= _MAX_DEVICE_ID else None,
        seq=seq if isinstance(seq, int) and not isinstance(seq, bool) and abs(seq) <= _MAX_SEQ else None,
        payload=payload,
    )


def _receipt(up: _Up) -> ReceiptRow | None:
    p = up.envelope.payload
    alert_id, stage = p.get("alert_id"), p.get("stage")
    if not isinstance(alert_id, str) or not isinstance(stage, str) or len(alert_id) > 64 or len(stage) > 16:
        return None
    device = p.get("device") if isinstance(p.get("device"), str) else None
    try:
        ts = parse_ts(str(p.get("ts") or up.envelope.ts))
    except ValueError:
        ts = up.received_at
    detail = {k: v for k, v in p.items() if k not in ("alert_id", "stage", "device", "ts")}
    device = device[:128] if device else None
    return ReceiptRow(alert_id, up.gateway_id, stage, device, ts, up.received_at, detail)


def _security_event(up: _Up) -> SecurityEventRow:
    payload = up.envelope.payload
    reason = payload.get("reason")
    rest = {k: v for k, v in payload.items() if k != "reason"}
    return SecurityEventRow(
        at=up.received_at,
        gateway_id=up.gateway_id,
        source="gateway",
        reason=reason if isinstance(reason, str) and reason else "unspecified",
        detail=orjson.dumps(rest, option=orjson.OPT_SORT_KEYS).decode() if rest else "",
        envelope_id=up.envelope.id,
    )
