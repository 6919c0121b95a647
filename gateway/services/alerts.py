"""Emergency alerts (应急广播) in the home: every screen and speaker, at once, until it is over.

Alerts arrive from the cloud link already verified (Ed25519 against the trust store, fresh,
not replayed) as normalized CAP 1.2 (cloud_bridge/cap.py), or are raised here by a smoke or CO
detector. Before anything is shown the alert is checked again (data dictionary, region, time),
de-duplicated by CAP identity, checked against tombstones (a Cancel may arrive before its
alert), and written to the registry. Then it is presented on every TV and speaker:

- level 1 (特别重大/红): a full-screen overlay on every TV, turned on from standby, volume
  raised and mute lifted; every speaker announces headline and instruction, again every
  `repeat_interval_s` until acknowledged (at most `repeat_count` times);
- levels 2–4: a banner on every TV and one spoken notice (a tone-like short notice for 3–4).

With several alerts in force the home presents one, the most important: the highest level
(1 before 4), and of equal levels the newest (CAP `sent`, then arrival). Every TV shows it (its
overlay says how many more are in force), every speaker speaks it, and only it is repeated.
Whenever what is in force changes — a new alert, an Update (which takes its original's place),
a Cancel, an expiry, an acknowledgement — the most important alert still in force is presented;
a lower one never hides a level-1 alert. Acknowledging a level 2–4 alert takes it off the
screens; a level-1 alert stays until it ends, marked acknowledged and no longer repeated. A TV
or speaker that comes (back) online gets what is presented. Receipts say what each device
actually presented: an alert that never came to the top has no `displayed` receipt.

Alerts pre-empt everything (their overlay replaces any other) and nothing else may use the
alert presentation (MQTT/HTTP `set` of an alert overlay is refused). Drills (Exercise, Test)
are shown labelled 演练, or not at all, per `alerts.drills`; System and Draft never. Active alerts
are retained on `home/<gw>/alert/<id>` and presented again after a restart until they expire
or are acknowledged. Every stage is receipted up to the cloud through the outbox: received,
displayed/spoken (per device, with timestamps), acknowledged, expired, updated, cancelled,
suppressed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError

from cloud_bridge.cap import Alert, Info, alert_problems, expires_utc, lang_order, priority, sent_utc
from cloud_bridge.protocol import region_prefixes
from gateway.bus import Event
from gateway.errors import CommandRejected, DeviceError, RegistryError
from gateway.hub import Device, Hub
from gateway.model import Kind
from gateway.registry import AlertRow, Registry

__all__ = ["LEVELS", "AlertPolicy", "AlertService"]

log = logging.getLogger(__name__)

#: level → (Chinese name, colour name, English colour)
LEVELS = {
    1: ("特别重大", "红色", "red"),
    2: ("重大", "橙色", "orange"),
    3: ("较大", "黄色", "yellow"),
    4: ("一般", "蓝色", "blue"),
}
_FUTURE_SKEW = timedelta(minutes=5)
_TOMBSTONE_DAYS = 7
_ALERT_VOLUME = 60
_SMOKE_CO_PPM = 50.0

Receipt = Callable[[dict[str, Any]], Awaitable[None]]
Security = Callable[[str, str, str], Awaitable[None]]  # (reason, alert id, detail)


@dataclass(frozen=True, slots=True)
class AlertPolicy:
    language: str = "zh-CN"
    drills: Literal["label", "hide"] = "label"
    #: When an alert gives no `expires`, it ends this long after it was sent.
    default_expiry: timedelta = timedelta(hours=6)
    repeat_interval_s: float = 60.0
    repeat_count: int = 5


@dataclass(slots=True)
class _Active:
    row: AlertRow
    model: Alert
    info: Info
    announced: int = 0
    next_announce: float = math.inf
    #: Devices that showed or spoke it (each is receipted once).
    presented_to: set[str] = field(default_factory=set)
    #: When this alert was verified (or raised), persisted and last dispatched to the devices.
    timeline: dict[str, str] = field(default_factory=dict)

    def rank(self) -> tuple[int, float, float]:
        """Smaller is more important: the level, then the newest `sent`, then the newest arrival."""
        return (self.row.level, -sent_utc(self.model).timestamp(), -self.row.received_at.timestamp())


def _utc(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _utc_ms(ts: datetime | None = None) -> str:
    return (ts or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AlertService:
    def __init__(
        self,
        hub: Hub,
        registry: Registry,
        *,
        gateway_id: str,
        region: str = "",
        policy: AlertPolicy | None = None,
        receipt: Receipt | None = None,
        security: Security | None = None,
    ) -> None:
        self._hub = hub
        self._registry = registry
        self._gw = gateway_id
        self._region = region
        self.policy = policy or AlertPolicy()
        self._receipt = receipt
        self._security = security
        self._active: dict[str, _Active] = {}
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._local: dict[str, str] = {}  # detector device id → local alert id
        self._local_queue: asyncio.Queue[tuple[str, bool]] = asyncio.Queue(100)
        self._joined: asyncio.Queue[str] = asyncio.Queue(100)
        self._unlisten: Callable[[], None] | None = None
        self.counters: dict[str, int] = {}
        self._history_cache: list[AlertRow] = []
        #: The alert every screen and speaker presents now (None: nothing), and how many other
        #: alerts in force its overlay counts.
        self._shown: str | None = None
        self._shown_more = 0

    # -- wiring ---------------------------------------------------------------------------

    def set_links(self, *, region: str, receipt: Receipt | None, security: Security | None) -> None:
        self._region, self._receipt, self._security = region, receipt, security

    def attach(self) -> None:
        self._unlisten = self._hub.bus.listen(self._on_bus)

    def detach(self) -> None:
        if self._unlisten is not None:
            self._unlisten()

    async def load(self) -> None:
        """Alerts that were active when we stopped are presented again (if not over)."""
        now = datetime.now(UTC)
        for row in await self._registry.alerts(states=("active", "acknowledged")):
            if row.expires_at <= now:
                row.state, row.ended_at = "expired", now
                await self._registry.save_alert(row)
                continue
            if row.state == "acknowledged" and row.level != 1:
                continue
            try:
                model = Alert.model_validate(row.alert)
            except ValidationError:
                log.error("stored alert %s is unreadable; dropped", row.id)
                continue
            self._active[row.id] = _Active(row, model, self._info(model))
        if self._active:
            log.warning("%d alerts still active after restart; presenting them again", len(self._active))

    async def run(self) -> None:
        """Present what is in force, then keep time: repeats, expiry, and local alarms."""
        async with self._lock:
            for item in self._active.values():
                self._hub.emit_event("alert", self.view(item))
            await self._refresh()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._local_alarms(), name="alerts-local")
            tg.create_task(self._late_devices(), name="alerts-late-devices")
            while True:
                now = time.monotonic()
                wall = datetime.now(UTC)
                due = math.inf
                async with self._lock:
                    for item in list(self._active.values()):
                        left = (item.row.expires_at - wall).total_seconds()
                        if left <= 0:
                            await self._end(item, "expired")
                            continue
                        due = min(due, now + left)
                        if item.row.id == self._shown and item.next_announce <= now:
                            await self._announce(item)
                        due = min(due, item.next_announce)
                self._changed.clear()
                timeout = None if due == math.inf else max(0.05, due - time.monotonic())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._changed.wait()

    # -- intake ---------------------------------------------------------------------------

    def _count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    async def on_cloud_alert(self, payload: Mapping[str, Any], *, envelope_id: str = "") -> str:
        """A verified `alert` message from the cloud. Returns what became of it."""
        try:
            model = Alert.model_validate(payload.get("alert"))
        except ValidationError as exc:
            self._count("invalid")
            await self._report_security(
                "invalid_alert", str(payload.get("alert_id", "")), f"{exc.error_count()} errors"
            )
            return "rejected"
        problems = alert_problems(model)
        if problems:
            self._count("invalid")
            await self._report_security("invalid_alert", model.alert_id, "; ".join(problems)[:300])
            return "rejected"
        targets = [str(t) for t in payload.get("targets") or ["all"]]
        if "all" not in targets and self._region and not set(targets) & set(region_prefixes(self._region)):
            self._count("out_of_region")
            await self._report_security("out_of_region", model.alert_id, ",".join(targets)[:200])
            return "suppressed"
        return await self.accept(model, local=False)

    async def accept(self, model: Alert, *, local: bool) -> str:
        """Lifecycle and presentation of one alert (cloud or local)."""
        async with self._lock:
            return await self._accept(model, local=local)

    async def _accept(self, model: Alert, *, local: bool) -> str:
        alert_id = model.alert_id
        now = datetime.now(UTC)
        level = priority(model)
        if sent_utc(model) > now + _FUTURE_SKEW:
            self._count("future")
            await self._report_security("future", alert_id, model.sent)
            return "rejected"
        expires = self._expires(model)
        if model.msg_type in ("Update", "Cancel") and model.references:
            await self._close_references(model, now)
        if model.msg_type == "Cancel":
            await self._refresh()
            await self._send_receipt(
                alert_id, "received", level=level, result="verified" if not local else "local"
            )
            return "cancelled others"
        if model.msg_type not in ("Alert", "Update"):
            return "ignored"
        if expires <= now:
            self._count("expired_on_arrival")
            await self._report_security("expired", alert_id, model.sent)
            await self._refresh()  # an Update that came too late still ended its original
            return "rejected"
        if alert_id in self._active or await self._registry.alert_exists(alert_id):
            self._count("duplicate")
            await self._refresh()
            if not local:
                # The cloud sends again what it has no receipt for: the first one may have been
                # lost to a crash between keeping the alert and queueing its receipt.
                await self._send_receipt(alert_id, "received", level=level, result="duplicate")
            return "duplicate"
        reason = await self._registry.tombstone(alert_id)
        if reason is not None:
            self._count("tombstoned")
            await self._refresh()
            await self._send_receipt(alert_id, "suppressed", level=level, reason=reason)
            return "suppressed"
        drill = model.status in ("Exercise", "Test")
        if model.status in ("System", "Draft") or (drill and self.policy.drills == "hide"):
            self._count("not_for_public")
            await self._refresh()
            await self._send_receipt(alert_id, "suppressed", level=level, reason=model.status.lower())
            return "suppressed"
        row = AlertRow(
            id=alert_id,
            alert=model.model_dump(mode="json"),
            level=level,
            state="active",
            local=local,
            expires_at=expires,
            received_at=now,
        )
        await self._registry.save_alert(row)  # kept before anything is shown or receipted
        item = _Active(
            row, model, self._info(model), timeline={"verified": _utc_ms(now), "persisted": _utc_ms()}
        )
        self._active[alert_id] = item
        self._count("accepted")
        log.warning(
            "ALERT %s level %d %s: %s", alert_id, level, model.status, item.info.headline or item.info.event
        )
        self._hub.emit_event("alert", self.view(item))
        # The alert is on disk already: its receipt is written while it is being presented.
        received = asyncio.create_task(
            self._send_receipt(
                alert_id,
                "received",
                level=level,
                result="local" if local else "verified",
                timeline=dict(item.timeline),
            )
        )
        await self._refresh()
        await received
        self._changed.set()
        return "presented" if self._shown == alert_id else "in force"

    def _expires(self, model: Alert) -> datetime:
        stamps = [t for t in (expires_utc(i) for i in model.infos) if t is not None]
        return min(stamps) if stamps else sent_utc(model) + self.policy.default_expiry

    async def _close_references(self, model: Alert, now: datetime) -> None:
        """End what an Update or Cancel names (and remember it, should it arrive later); the
        caller presents what is then the most important."""
        reason: Literal["cancelled", "updated"] = "cancelled" if model.msg_type == "Cancel" else "updated"
        ids = [r.alert_id for r in model.references]
        await self._registry.add_tombstones(ids, reason=reason, until=now + timedelta(days=_TOMBSTONE_DAYS))
        for ref in ids:
            item = self._active.get(ref)
            if item is not None:
                await self._end(item, reason, refresh=False)

    def _info(self, model: Alert) -> Info:
        ordered = lang_order(model, preferred=self.policy.language)
        if not ordered:
            raise ValueError("alert without info")
        return ordered[0]

    # -- presentation ---------------------------------------------------------------------

    def _overlay(self, item: _Active) -> dict[str, Any]:
        model, info, level = item.model, item.info, item.row.level
        name, colour, colour_en = LEVELS[level]
        drill = model.status in ("Exercise", "Test")
        title = f"{colour}预警 · {name}" + (" · 演练 DRILL" if drill else "")
        return {
            "kind": "alert",
            "alert_id": item.row.id,
            "level": level,
            "color": colour_en,
            "style": "fullscreen" if level == 1 else "banner",
            "title": title,
            "event": info.event,
            "headline": info.headline or info.event,
            "description": info.description or "",
            "instruction": info.instruction or "",
            "sender": info.sender_name or model.sender,
            "sent": model.sent,
            "expires": _utc(item.row.expires_at),
            "drill": drill,
            "languages": [
                {"lang": i.language, "headline": i.headline or i.event, "instruction": i.instruction or ""}
                for i in lang_order(model, preferred=self.policy.language)
            ],
            "acknowledged": item.row.state == "acknowledged",
            # Other alerts in force, less important than this one (the TV menu lists them).
            "more": len(self._active) - 1 if item.row.id in self._active else len(self._active),
        }

    def view(self, item: _Active) -> dict[str, Any]:
        """The alert as the TV menu and the retained topic show it."""
        o = self._overlay(item)
        return {
            "id": item.row.id,
            "level": item.row.level,
            "status": item.model.status,
            "drill": o["drill"],
            "headline": o["headline"],
            "description": o["description"],
            "instruction": o["instruction"],
            "event": o["event"],
            "sender_name": o["sender"],
            "sent": item.model.sent,
            "expires": o["expires"],
            "language": item.info.language,
            "infos": [
                {
                    "language": i.language,
                    "headline": i.headline or i.event,
                    "description": i.description or "",
                    "instruction": i.instruction or "",
                    "event": i.event,
                }
                for i in lang_order(item.model, preferred=self.policy.language)
            ],
            "acknowledged": item.row.state == "acknowledged",
            "state": item.row.state,
            "local": item.row.local,
        }

    def _speech(self, item: _Active) -> dict[str, Any]:
        info, level = item.info, item.row.level
        name, colour, _ = LEVELS[level]
        drill = "演练。" if item.model.status in ("Exercise", "Test") else ""
        zh = info.language.lower().startswith("zh")
        if zh:
            text = f"{drill}{colour}预警，{name}。{info.headline or info.event}。"
            if level <= 2 and info.instruction:
                text += info.instruction
        else:
            colour_en = LEVELS[level][2].title()
            text = f"{'Drill. ' if drill else ''}{colour_en} alert. {info.headline or info.event}."
            if level <= 2 and info.instruction:
                text += " " + info.instruction
        return {"say": {"text": text[:1900], "lang": info.language, "priority": "alert"}}

    def _screens(self) -> list[Device]:
        return [
            d
            for d in self._hub.devices(approved=True)
            if d.info.kind is Kind.TV and "overlay" in d.info.settable
        ]

    def _speakers(self) -> list[Device]:
        return [d for d in self._hub.devices(approved=True) if "say" in d.info.settable]

    async def _command(self, dev: Device, values: dict[str, Any]) -> bool:
        # Straight to the device: the alert presentation does not go through `validate`
        # (which refuses alert overlays from everyone else).
        values = {k: v for k, v in values.items() if k in dev.info.settable}
        try:
            await self._hub.command(dev.info.id, values)
        except (DeviceError, CommandRejected) as exc:
            log.warning("alert presentation on %s failed: %s", dev.info.id, exc)
            return False
        return True

    def _top(self) -> _Active | None:
        """The alert the home presents: the most important one in force."""
        return min(self._active.values(), key=_Active.rank, default=None)

    async def _refresh(self) -> None:
        """Present the most important alert in force if it is not what is presented (callers
        hold `_lock`); clear the screens when nothing is in force. When only the number of
        other alerts in force changed, the screens are told (their overlay counts them)."""
        top = self._top()
        if top is None:
            if self._shown is not None:
                self._shown = None
                await asyncio.gather(*(self._command(tv, {"overlay": None}) for tv in self._screens()))
            return
        if top.row.id == self._shown:
            if self._shown_more != len(self._active) - 1:
                self._shown_more = len(self._active) - 1
                await asyncio.gather(
                    *(self._command(tv, {"overlay": self._overlay(top)}) for tv in self._screens())
                )
            return
        previous = self._active.get(self._shown or "")
        if previous is not None:
            previous.next_announce = math.inf  # only what is presented is repeated
        self._shown, self._shown_more = top.row.id, len(self._active) - 1
        await self._present(top)

    def _screen_values(self, item: _Active, tv: Device) -> dict[str, Any]:
        values: dict[str, Any] = {"overlay": self._overlay(item)}
        if item.row.level == 1:
            values["on"] = True
            values["volume"] = max(int(tv.state.get("volume", 0) or 0), _ALERT_VOLUME)
            values["muted"] = False
        return values

    async def _present(self, item: _Active) -> None:
        """On every screen, and (unless acknowledged) on every speaker, at the same time."""
        item.timeline["dispatched"] = _utc_ms()
        tasks = [self._show(item, tv, self._screen_values(item, tv)) for tv in self._screens()]
        if item.row.state != "acknowledged":
            item.announced = 0
            tasks.append(self._announce(item))  # speakers at the same time as the screens
        await asyncio.gather(*tasks)

    async def _show(self, item: _Active, tv: Device, values: dict[str, Any]) -> None:
        if await self._command(tv, values):
            await self._presented(item, tv, "displayed")

    async def _presented(self, item: _Active, dev: Device, stage: Literal["displayed", "spoken"]) -> None:
        """A device presented the alert: receipted once per device."""
        if dev.info.id in item.presented_to:
            return
        item.presented_to.add(dev.info.id)
        await self._send_receipt(
            item.row.id,
            stage,
            device=dev.info.id,
            level=item.row.level,
            dispatched=item.timeline.get("dispatched"),
        )

    async def _announce(self, item: _Active) -> None:
        speech = self._speech(item)

        async def say(speaker: Device) -> None:
            if await self._command(speaker, speech):
                await self._presented(item, speaker, "spoken")

        await asyncio.gather(*(say(s) for s in self._speakers()))
        item.announced += 1
        repeat = (
            item.row.level == 1 and item.row.state == "active" and item.announced < self.policy.repeat_count
        )
        item.next_announce = time.monotonic() + self.policy.repeat_interval_s if repeat else math.inf

    async def _end(
        self, item: _Active, how: Literal["expired", "cancelled", "updated"], *, refresh: bool = True
    ) -> None:
        self._active.pop(item.row.id, None)
        item.row.state, item.row.ended_at = how, datetime.now(UTC)
        with contextlib.suppress(RegistryError):
            await self._registry.save_alert(item.row)
        if refresh:
            await self._refresh()  # the most important alert still in force, or a clear screen
        self._hub.emit_event("alert_cleared", {"id": item.row.id, "state": how})
        await self._send_receipt(item.row.id, how, level=item.row.level)
        log.warning("alert %s %s", item.row.id, how)
        self._changed.set()

    # -- household actions ----------------------------------------------------------------

    def active(self) -> list[dict[str, Any]]:
        """In force, the most important first (what the home presents is the first)."""
        return [self.view(a) for a in sorted(self._active.values(), key=_Active.rank)]

    def history(self, limit: int = 50) -> list[dict[str, Any]]:
        return [
            {"id": r.id, "level": r.level, "state": r.state, "received_at": _utc(r.received_at),
             "headline": self._headline(r.alert), "local": r.local}
            for r in self._history_cache[:limit]
        ]  # fmt: skip

    async def refresh_history(self) -> None:
        self._history_cache = await self._registry.alerts(states=None, limit=200)

    @staticmethod
    def _headline(alert: Mapping[str, Any]) -> str:
        infos = alert.get("infos") or [{}]
        return str(infos[0].get("headline") or infos[0].get("event") or "")

    async def acknowledge(self, alert_id: str, source: str) -> bool:
        async with self._lock:
            item = self._active.get(alert_id)
            if item is None:
                return False
            if item.row.state == "acknowledged":
                return True
            item.row.state, item.row.acknowledged_at = "acknowledged", datetime.now(UTC)
            item.row.acknowledged_by = source[:128]
            item.next_announce = math.inf
            await self._registry.save_alert(item.row)
            await self._send_receipt(alert_id, "acknowledged", level=item.row.level, source=source[:64])
            if item.row.level != 1:
                # Acknowledged lower levels leave the screens, for what is most important next.
                self._active.pop(alert_id, None)
                await self._refresh()
                self._hub.emit_event("alert_cleared", {"id": alert_id, "state": "acknowledged"})
            else:
                if self._shown == alert_id:  # still on screen, marked as acknowledged
                    await asyncio.gather(
                        *(self._command(tv, {"overlay": self._overlay(item)}) for tv in self._screens())
                    )
                self._hub.emit_event("alert", self.view(item))
            return True

    async def announce_again(self, device_id: str | None) -> bool:
        """ "再说一遍": announce the most important active alert again."""
        item = self._top()
        if item is None:
            return False
        speech = self._speech(item)
        targets = [
            d for d in self._speakers() if device_id is None or d.info.id == device_id
        ] or self._speakers()
        await asyncio.gather(*(self._command(s, speech) for s in targets))
        return True

    async def _late_devices(self) -> None:
        """A screen or speaker that comes (back) online gets what the home presents."""
        while True:
            device_id = await self._joined.get()
            dev = self._hub.get(device_id)
            if dev is None:
                continue
            async with self._lock:
                item = self._active.get(self._shown or "")
                if item is None:
                    continue
                if dev in self._screens():
                    await self._show(item, dev, self._screen_values(item, dev))
                speaks = dev in self._speakers() and item.row.state == "active"
                if speaks and await self._command(dev, self._speech(item)):
                    await self._presented(item, dev, "spoken")

    # -- local alarms ---------------------------------------------------------------------

    def _on_bus(self, event: Event) -> None:
        if event.kind == "availability" and event.data.get("online") and self._active:
            # A screen or speaker that (re)appears gets whatever is still active.
            with contextlib.suppress(asyncio.QueueFull):
                self._joined.put_nowait(event.device_id)
            return
        if event.kind != "state":
            return
        smoke = event.data.get("smoke")
        co = event.data.get("co")
        if smoke is None and co is None:
            return
        alarm = smoke is True or (isinstance(co, int | float) and co >= _SMOKE_CO_PPM)
        with contextlib.suppress(asyncio.QueueFull):
            self._local_queue.put_nowait((event.device_id, alarm))

    async def _local_alarms(self) -> None:
        while True:
            device_id, alarm = await self._local_queue.get()
            current = self._local.get(device_id)
            if alarm and current is None:
                model = self._local_alert(device_id)
                self._local[device_id] = model.alert_id
                self._hub.emit_event(
                    "local_alarm", {"device": device_id, "alert_id": model.alert_id, "state": "raised"}
                )
                await self.accept(model, local=True)
            elif not alarm and current is not None:
                self._local.pop(device_id, None)
                async with self._lock:
                    item = self._active.get(current)
                    if item is not None:
                        await self._end(item, "cancelled")
                self._hub.emit_event(
                    "local_alarm", {"device": device_id, "alert_id": current, "state": "cleared"}
                )

    def _local_alert(self, device_id: str) -> Alert:
        dev = self._hub.get(device_id)
        name = dev.info.name if dev else device_id
        room = dev.info.room if dev else ""
        is_co = dev is not None and "co" in dev.info.capabilities and "smoke" not in dev.info.capabilities
        now = datetime.now(UTC).replace(microsecond=0)
        sent = now.isoformat()
        what_zh, what_en = ("一氧化碳", "carbon monoxide") if is_co else ("烟雾", "smoke")
        where = f"{room}的" if room else ""
        return Alert.model_validate(
            {
                "sender": f"gateway:{self._gw}",
                "identifier": f"local-{device_id}-{int(now.timestamp())}",
                "sent": sent,
                "status": "Actual",
                "msg_type": "Alert",
                "scope": "Private",
                "addresses": self._gw,
                "infos": [
                    {
                        "language": "zh-CN",
                        "categories": ["Fire" if not is_co else "Health"],
                        "event": f"家庭{what_zh}报警",
                        "urgency": "Immediate",
                        "severity": "Extreme",
                        "certainty": "Observed",
                        "sender_name": "家庭网关",
                        "headline": f"{where}{name}检测到{what_zh}",
                        "instruction": "请立即查看，必要时撤离并拨打119。"
                        if not is_co
                        else "请立即开窗通风并离开房间，必要时拨打120。",
                    },
                    {
                        "language": "en-US",
                        "categories": ["Fire" if not is_co else "Health"],
                        "event": f"Home {what_en} alarm",
                        "urgency": "Immediate",
                        "severity": "Extreme",
                        "certainty": "Observed",
                        "sender_name": "Home gateway",
                        "headline": f"{name} detected {what_en}",
                        "instruction": "Check now; leave and call 119 if needed."
                        if not is_co
                        else "Open windows, leave the room; call 120 if needed.",
                    },
                ],
            }
        )

    # -- receipts -------------------------------------------------------------------------

    async def _send_receipt(self, alert_id: str, stage: str, **extra: Any) -> None:
        if self._receipt is None:
            return
        payload = {"alert_id": alert_id, "stage": stage, "ts": _utc_ms(), **extra}
        try:
            await self._receipt(payload)
        except Exception:  # the outbox is full or closed: presentation must go on
            log.exception("alert receipt %s/%s not kept", alert_id, stage)

    async def _report_security(self, reason: str, alert_id: str, detail: str) -> None:
        log.warning("alert %s not presented: %s (%s)", alert_id, reason, detail[:200])
        if self._security is not None:
            try:
                await self._security(reason, alert_id, detail)
            except Exception:
                log.exception("security event for alert %s not kept", alert_id)
