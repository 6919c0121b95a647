"""Voice control: transcripts in, actions and a spoken answer out, Chinese first.

Transcripts arrive as `voice` events: from a speaker's `heard` events and from MQTT
`home/<gw>/voice/in` (`{"text", "lang", "source"}`). Each is normalized (punctuation, Chinese
numerals), matched (gateway/services/voice/matcher.py) and executed through the same command
path as MQTT `set` (hub.validate + hub.command). The answer is spoken by the speaker that heard
it, in the language it was asked in; without a speaker it is published as the event
`voice_reply`. An ambiguous request gets a short question back (哪个房间的灯?) and the next
utterance from the same source can answer it; what matches nothing gets a polite fallback and
is kept for review.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from gateway.bus import Event
from gateway.errors import CommandRejected, DeviceError
from gateway.hub import Device, Hub
from gateway.model import Kind
from gateway.services.voice.matcher import Entity, Match, Matcher, base_language
from gateway.services.voice.vocabulary import ROOMS_EN, normalize

__all__ = ["Utterance", "VoiceAlerts", "VoiceService", "VoiceServices"]

log = logging.getLogger(__name__)

_QUEUE = 100
_CONTEXT_S = 20.0
_VOLUME_STEP = 10
_BRIGHTNESS_STEP = 20
_UNMATCHED_KEPT = 200
_SCENES: dict[str, list[tuple[Kind, dict[str, Any]]]] = {
    "away": [(Kind.LIGHT, {"on": False}), (Kind.TV, {"on": False}), (Kind.PLUG, {"on": False})],
    "sleep": [(Kind.LIGHT, {"on": False}), (Kind.TV, {"on": False})],
    "home": [(Kind.LIGHT, {"on": True})],
    "movie": [(Kind.LIGHT, {"brightness": 20}), (Kind.TV, {"on": True})],
}
_KIND_ZH = {Kind.LIGHT: "灯", Kind.TV: "电视", Kind.SPEAKER: "音箱", Kind.PLUG: "插座", Kind.SWITCH: "开关"}
_KIND_EN = {
    Kind.LIGHT: "light",
    Kind.TV: "TV",
    Kind.SPEAKER: "speaker",
    Kind.PLUG: "plug",
    Kind.SWITCH: "switch",
}


class VoiceAlerts(Protocol):
    def active(self) -> list[dict[str, Any]]: ...

    async def acknowledge(self, alert_id: str, source: str) -> bool: ...

    async def announce_again(self, device_id: str | None) -> bool: ...


class VoiceServices(Protocol):
    async def order(self, item: str, quantity: int, unit: str, lang: str) -> str: ...

    async def order_status(self, lang: str) -> str: ...

    async def gov_query(self, service: str, lang: str) -> str: ...


#: What is said when there is nothing to act on (zh-CN, en).
_Text = tuple[str, str]
_NO_DEVICE: _Text = ("没有找到这个设备。", "I couldn't find that device.")
_NO_DIMMABLE: _Text = ("没有可以调亮度的灯。", "There's no dimmable light there.")
_NO_VOLUME: _Text = ("没有可以调音量的设备。", "Nothing here has a volume.")
_NO_MUTE: _Text = ("没有可以静音的设备。", "Nothing here can be muted.")
_NO_TV: _Text = ("没有找到电视。", "I couldn't find a TV.")


class _Reply(Exception):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


@dataclass(frozen=True, slots=True)
class Utterance:
    text: str
    lang: str
    source: str = ""


@dataclass(slots=True)
class _Pending:
    match: Match
    lang: str
    until: float


@dataclass(slots=True)
class VoiceStats:
    heard: int = 0
    matched: int = 0
    unmatched: int = 0
    asked_back: int = 0
    dropped: int = 0
    failed: int = 0
    unmatched_texts: deque[tuple[str, str]] = field(default_factory=lambda: deque(maxlen=_UNMATCHED_KEPT))


class VoiceService:
    def __init__(
        self,
        hub: Hub,
        *,
        alerts: VoiceAlerts | None = None,
        services: VoiceServices | None = None,
        default_lang: str = "zh-CN",
    ) -> None:
        self._hub = hub
        self.alerts = alerts
        self.services = services
        self._default_lang = default_lang
        self.matcher = Matcher()
        self._queue: asyncio.Queue[Utterance] = asyncio.Queue(_QUEUE)
        self._pending: dict[str, _Pending] = {}
        self._home_dirty = True
        self.stats = VoiceStats()
        self.replies: deque[dict[str, Any]] = deque(maxlen=50)
        self._unlisten: Callable[[], None] | None = None

    # -- wiring ---------------------------------------------------------------------------

    def attach(self) -> None:
        self._unlisten = self._hub.bus.listen(self._on_event)
        self.matcher.match("打开灯", "zh-CN")  # compile hassil's matchers before the first person waits
        self.matcher.match("turn on the light", "en")

    def detach(self) -> None:
        if self._unlisten is not None:
            self._unlisten()

    def _on_event(self, event: Event) -> None:
        if event.kind in ("info", "removed"):
            self._home_dirty = True
        elif event.kind == "event" and event.device_id == "voice":
            text, lang = event.data.get("text"), event.data.get("lang") or self._default_lang
            if not isinstance(text, str) or not text.strip() or len(text) > 500 or not isinstance(lang, str):
                return
            try:
                self._queue.put_nowait(Utterance(text.strip(), lang, str(event.data.get("source") or "")))
            except asyncio.QueueFull:
                self.stats.dropped += 1

    async def run(self) -> None:
        while True:
            utterance = await self._queue.get()
            try:
                await self.handle(utterance)
            except Exception:  # one bad utterance must not stop voice control
                self.stats.failed += 1
                log.exception("voice: failed on %r", utterance.text)

    # -- understanding --------------------------------------------------------------------

    def _refresh_home(self) -> None:
        if not self._home_dirty:
            return
        self._home_dirty = False
        self.matcher.set_home(
            Entity(d.info.id, d.info.name, d.info.room, d.info.kind) for d in self._hub.devices(approved=True)
        )

    def understand(self, text: str, lang: str) -> Match | None:
        self._refresh_home()
        return self.matcher.match(normalize(text, lang), lang)

    async def handle(self, u: Utterance) -> str:
        """Understand, act, answer. Returns the answer (also spoken or published)."""
        self.stats.heard += 1
        lang = base_language(u.lang)
        match = self.understand(u.text, lang)
        pending = self._pending.pop(u.source, None)
        if pending is not None and time.monotonic() < pending.until:
            completed = self._complete(pending, match, u.text, lang)
            if completed is not None:
                match, lang = completed, pending.lang
        if match is None:
            self.stats.unmatched += 1
            self.stats.unmatched_texts.append((u.text, lang))
            log.info("voice: no match for %r (%s); kept for review", u.text, lang)
            answer = _t(
                lang,
                "抱歉，我没听懂。您可以说“打开客厅的灯”。",
                "Sorry, I didn't catch that. Try “turn on the living room light”.",
            )
        else:
            self.stats.matched += 1
            answer = await self._execute(match, lang, u.source)
        await self._answer(answer, lang, u)
        return answer

    def _complete(self, pending: _Pending, match: Match | None, text: str, lang: str) -> Match | None:
        """An answer to our question ("哪个房间的灯?" → "客厅") fills the missing room. A new
        request ("关闭客厅的灯", "客厅现在多少度") is not an answer: it is handled as itself."""
        self._refresh_home()
        room = None
        if match is not None:
            if set(match.slots) != {"area"}:
                return None
            room = match.slots["area"]
        else:
            norm = normalize(text, lang).lower()
            rooms = {e.room for e in self.matcher.entities.values() if e.room}
            for r in rooms:
                if r in norm or any(alias in norm for alias in ROOMS_EN.get(r, ())):
                    room = r
        if room is None:
            return None
        return Match(pending.match.intent, {**pending.match.slots, "area": room}, pending.match.source)

    # -- acting ---------------------------------------------------------------------------

    def _room_of(self, device_id: str) -> str:
        dev = self._hub.get(device_id)
        return dev.info.room if dev else ""

    def _targets(
        self, slots: Mapping[str, Any], source: str, *, capability: str, default_kind: Kind | None = None
    ) -> list[Device] | str:
        """Devices meant by the slots; or a reason ("ask"/"none") when we cannot tell."""
        devices = [d for d in self._hub.devices(approved=True) if capability in d.info.settable]
        if "name" in slots:
            return [d for d in devices if d.info.id == slots["name"]] or "none"
        kind = slots.get("device_kind") or default_kind
        if isinstance(kind, str):
            kind = Kind(kind)
        if kind is not None:
            devices = [d for d in devices if d.info.kind is kind]
        if "area" in slots:
            devices = [d for d in devices if d.info.room == slots["area"]]
            return devices or "none"
        if len(devices) <= 1:
            return devices or "none"
        here = self._room_of(source)
        local = [d for d in devices if here and d.info.room == here]
        if local:
            return local
        return "ask"

    async def _apply(self, devices: list[Device], values: dict[str, Any]) -> list[str]:
        """Same path as MQTT `set`; returns the names of devices that failed."""
        failed = []
        for dev in devices:
            try:
                applicable = {k: v for k, v in values.items() if k in dev.info.settable}
                if not applicable:
                    continue
                payload = _json(applicable)
                await self._hub.command(dev.info.id, self._hub.validate(dev.info.id, payload))
            except (CommandRejected, DeviceError) as exc:
                log.info("voice: %s refused %s: %s", dev.info.id, values, exc)
                failed.append(dev.info.name)
        return failed

    async def _execute(self, m: Match, lang: str, source: str) -> str:
        handler = self._handlers().get(m.intent)
        if handler is None:
            return _t(lang, "这个我还不会。", "I can't do that yet.")
        try:
            return await handler(m.slots, lang, source, m)
        except _Reply as reply:  # a question back, or nothing to act on
            return reply.text

    def _handlers(self) -> dict[str, Callable[[Mapping[str, Any], str, str, Match], Awaitable[str]]]:
        return {
            "BfyTurnOn": lambda s, lang, src, m: self._switch(s, lang, src, m, True),
            "BfyTurnOff": lambda s, lang, src, m: self._switch(s, lang, src, m, False),
            "BfyBrightnessSet": self._brightness,
            "BfyBrighter": lambda s, lang, src, m: self._brightness_step(s, lang, src, m, _BRIGHTNESS_STEP),
            "BfyDimmer": lambda s, lang, src, m: self._brightness_step(s, lang, src, m, -_BRIGHTNESS_STEP),
            "BfyVolumeSet": self._volume,
            "BfyVolumeUp": lambda s, lang, src, m: self._volume_step(s, lang, src, m, _VOLUME_STEP),
            "BfyVolumeDown": lambda s, lang, src, m: self._volume_step(s, lang, src, m, -_VOLUME_STEP),
            "BfyMute": lambda s, lang, src, m: self._mute(s, lang, src, m, True),
            "BfyUnmute": lambda s, lang, src, m: self._mute(s, lang, src, m, False),
            "BfyChannel": self._channel,
            "BfyInput": self._input,
            "BfyTemperature": lambda s, lang, src, m: self._reading(s, lang, src, "temperature"),
            "BfyHumidity": lambda s, lang, src, m: self._reading(s, lang, src, "humidity"),
            "BfyDoorCheck": self._doors,
            "BfyScene": self._scene,
            "BfyMedia": self._media,
            "BfyAlertAck": self._alert_ack,
            "BfyAlertRepeat": self._alert_repeat,
            "BfyCancel": lambda s, lang, src, m: _answer_now(_t(lang, "好的。", "OK.")),
            "BfyOrder": self._order,
            "BfyOrderStatus": self._order_status,
            "BfyGovQuery": self._gov,
        }

    def _chosen(
        self,
        targets: list[Device] | str,
        m: Match,
        lang: str,
        source: str,
        kind: Kind | None,
        none: _Text,
    ) -> list[Device]:
        """The devices `_targets` found; else the answer instead of acting (`_Reply`): a question
        back when it cannot tell which, or `none` when there is nothing to act on."""
        if targets == "ask":
            raise _Reply(self._ask(m, lang, source, kind))
        if targets == "none":
            raise _Reply(_t(lang, *none))
        assert isinstance(targets, list)
        return targets

    def _ask(self, m: Match, lang: str, source: str, kind: Kind | None) -> str:
        self.stats.asked_back += 1
        self._pending[source] = _Pending(m, lang, time.monotonic() + _CONTEXT_S)
        what_zh = _KIND_ZH.get(kind, "设备") if kind else "设备"
        what_en = _KIND_EN.get(kind, "device") if kind else "device"
        return _t(lang, f"哪个房间的{what_zh}？", f"Which room's {what_en}?")

    async def _switch(self, s: Mapping[str, Any], lang: str, source: str, m: Match, on: bool) -> str:
        kind = _kind(s)
        targets = self._chosen(self._targets(s, source, capability="on"), m, lang, source, kind, _NO_DEVICE)
        failed = await self._apply(targets, {"on": on})
        return self._done(
            lang, targets, failed, _t(lang, "打开了" if on else "关闭了", "on" if on else "off")
        )

    def _done(self, lang: str, targets: list[Device], failed: list[str], verb: str) -> str:
        ok = [d.info.name for d in targets if d.info.name not in failed]
        if not ok:
            return _t(
                lang, f"{'、'.join(failed)}暂时无法控制。", f"{', '.join(failed)} can't be reached right now."
            )
        names = "、".join(ok)
        if lang == "zh-CN":
            return f"好的，已{verb}{names}。" + (f"{'、'.join(failed)}暂时无法控制。" if failed else "")
        names_en = ", ".join(_english_name(self._hub.get(d.info.id)) for d in targets if d.info.name in ok)
        return (
            f"OK, {names_en} {'is' if len(ok) == 1 else 'are'} {verb}."
            if verb in ("on", "off")
            else f"OK, {verb} {names_en}."
        )

    def _dimmable(self, s: Mapping[str, Any], lang: str, source: str, m: Match) -> list[Device]:
        found = self._targets(s, source, capability="brightness", default_kind=Kind.LIGHT)
        return self._chosen(found, m, lang, source, Kind.LIGHT, _NO_DIMMABLE)

    async def _brightness(self, s: Mapping[str, Any], lang: str, source: str, m: Match) -> str:
        targets = self._dimmable(s, lang, source, m)
        level = max(0, min(100, round(float(s.get("percent", 50)))))
        failed = await self._apply(targets, {"on": level > 0, "brightness": level})
        return self._done(lang, targets, failed, _t(lang, f"把亮度调到{level}%：", f"set to {level}%:"))

    async def _brightness_step(
        self, s: Mapping[str, Any], lang: str, source: str, m: Match, step: int
    ) -> str:
        targets = self._dimmable(s, lang, source, m)
        for dev in targets:
            level = max(0, min(100, int(dev.state.get("brightness", 50)) + step))
            await self._apply([dev], {"on": True, "brightness": level})
        return _t(
            lang,
            "好的，调" + ("亮" if step > 0 else "暗") + "了。",
            "OK, " + ("brighter." if step > 0 else "dimmer."),
        )

    def _media_target(self, s: Mapping[str, Any], source: str, capability: str) -> list[Device] | str:
        """Volume and the like: the named kind; else the TV in the speaker's room; else the speaker."""
        if "device_kind" in s or "name" in s or "area" in s:
            return self._targets(
                s, source, capability=capability, default_kind=None if "name" in s else Kind.TV
            )
        here = self._room_of(source)
        tvs = [
            d
            for d in self._hub.devices(approved=True)
            if d.info.kind is Kind.TV and capability in d.info.settable
        ]
        local = [d for d in tvs if here and d.info.room == here]
        if local:
            return local
        me = self._hub.get(source)
        if me is not None and capability in me.info.settable:
            return [me]
        return tvs if len(tvs) == 1 else ("ask" if tvs else "none")

    async def _volume(self, s: Mapping[str, Any], lang: str, source: str, m: Match) -> str:
        targets = self._chosen(self._media_target(s, source, "volume"), m, lang, source, Kind.TV, _NO_VOLUME)
        level = max(0, min(100, round(float(s.get("percent", 30)))))
        failed = await self._apply(targets, {"volume": level})
        return self._done(
            lang, targets, failed, _t(lang, f"把音量调到{level}：", f"set the volume to {level} on")
        )

    async def _volume_step(self, s: Mapping[str, Any], lang: str, source: str, m: Match, step: int) -> str:
        targets = self._chosen(self._media_target(s, source, "volume"), m, lang, source, Kind.TV, _NO_VOLUME)
        for dev in targets:
            level = max(0, min(100, int(dev.state.get("volume", 30)) + step))
            await self._apply([dev], {"volume": level, "muted": False})
        return _t(
            lang,
            "好的，音量" + ("大" if step > 0 else "小") + "了一些。",
            "OK, " + ("louder." if step > 0 else "quieter."),
        )

    async def _mute(self, s: Mapping[str, Any], lang: str, source: str, m: Match, muted: bool) -> str:
        targets = self._chosen(self._media_target(s, source, "muted"), m, lang, source, Kind.TV, _NO_MUTE)
        failed = await self._apply(targets, {"muted": muted})
        return self._done(
            lang,
            targets,
            failed,
            _t(lang, "静音了" if muted else "恢复了声音：", "muted" if muted else "unmuted"),
        )

    def _tv(self, s: Mapping[str, Any], source: str, capability: str) -> list[Device] | str:
        return self._targets(s, source, capability=capability, default_kind=Kind.TV)

    async def _channel(self, s: Mapping[str, Any], lang: str, source: str, m: Match) -> str:
        targets = self._chosen(self._tv(s, source, "channel"), m, lang, source, Kind.TV, _NO_TV)
        if "channel" in s or "channel_number" in s:
            number = int(s.get("channel", s.get("channel_number", 1)))
        else:  # 下一个台
            number = int(targets[0].state.get("channel", 0)) + 1
        failed = await self._apply(targets, {"on": True, "channel": number})
        return self._done(
            lang, targets, failed, _t(lang, f"换到{number}频道：", f"switched to channel {number} on")
        )

    async def _input(self, s: Mapping[str, Any], lang: str, source: str, m: Match) -> str:
        targets = self._chosen(self._tv(s, source, "input"), m, lang, source, Kind.TV, _NO_TV)
        source_name = str(s.get("input_source", "tv"))
        failed = await self._apply(targets, {"on": True, "input": source_name})
        return self._done(
            lang,
            targets,
            failed,
            _t(lang, f"切换到{source_name.upper()}：", f"switched to {source_name.upper()} on"),
        )

    async def _reading(self, s: Mapping[str, Any], lang: str, source: str, capability: str) -> str:
        sensors = [d for d in self._hub.devices(approved=True) if capability in d.state and d.online]
        room = s.get("area") or (self._room_of(source) if "area" not in s else None)
        if room:
            in_room = [d for d in sensors if d.info.room == room]
            sensors = in_room or sensors if "area" not in s else in_room
        if not sensors:
            return _t(lang, "没有找到可用的传感器。", "I couldn't find a sensor there.")
        values = [float(d.state[capability]) for d in sensors]
        value = round(sum(values) / len(values), 1)
        where_zh = room or "家里"
        where_en = ROOMS_EN.get(str(room), (str(room),))[0] if room else "at home"
        if capability == "temperature":
            return _t(
                lang,
                f"{where_zh}现在{value}度。",
                f"It's {value} degrees in the {where_en}." if room else f"It's {value} degrees {where_en}.",
            )
        return _t(
            lang,
            f"{where_zh}湿度是{value}%。",
            f"The humidity in the {where_en} is {value}%." if room else f"The humidity is {value}%.",
        )

    async def _doors(self, s: Mapping[str, Any], lang: str, source: str, m: Match) -> str:
        doors = [d for d in self._hub.devices(approved=True) if "contact" in d.state]
        if "area" in s:
            doors = [d for d in doors if d.info.room == s["area"]]
        if not doors:
            return _t(lang, "家里没有门磁传感器。", "There's no door sensor.")
        open_ = [d for d in doors if d.state.get("contact") is False]
        if not open_:
            return _t(lang, "门都关好了。", "All doors are closed.")
        names = "、".join(d.info.name for d in open_)
        return _t(
            lang,
            f"{names}还开着。",
            f"{len(open_)} door{'s are' if len(open_) > 1 else ' is'} still open: {names}.",
        )

    async def _scene(self, s: Mapping[str, Any], lang: str, source: str, m: Match) -> str:
        scene = str(s.get("scene", ""))
        steps = _SCENES.get(scene)
        if steps is None:
            return _t(lang, "没有这个场景。", "I don't know that scene.")
        for kind, values in steps:
            devices = [d for d in self._hub.devices(approved=True) if d.info.kind is kind]
            await self._apply(devices, values)
        names = {
            "home": ("回家", "home"),
            "away": ("离家", "away"),
            "sleep": ("睡眠", "sleep"),
            "movie": ("观影", "movie"),
        }
        zh, en = names[scene]
        return _t(lang, f"好的，已切换到{zh}模式。", f"OK, {en} mode is on.")

    async def _media(self, s: Mapping[str, Any], lang: str, source: str, m: Match) -> str:
        query = str(s.get("query", "")).strip()
        me = self._hub.get(source)
        if me is not None and "playing" in me.info.settable:
            await self._apply([me], {"playing": True})
        return _t(lang, f"好的，为您播放{query}。", f"OK, playing {query}.")

    async def _alert_ack(self, s: Mapping[str, Any], lang: str, source: str, m: Match) -> str:
        active = self.alerts.active() if self.alerts else []
        if not active or self.alerts is None:
            return _t(lang, "好的。", "OK.")
        for alert in active:
            await self.alerts.acknowledge(str(alert["id"]), f"voice:{source}")
        return _t(lang, "好的，已确认预警。请注意安全。", "OK, the alert is acknowledged. Stay safe.")

    async def _alert_repeat(self, s: Mapping[str, Any], lang: str, source: str, m: Match) -> str:
        if (
            self.alerts is not None
            and self.alerts.active()
            and await self.alerts.announce_again(source or None)
        ):
            return ""  # the announcement itself is the answer
        return _t(lang, "现在没有预警。", "There's no active alert.")

    async def _order(self, s: Mapping[str, Any], lang: str, source: str, m: Match) -> str:
        if self.services is None:
            return _t(lang, "购物服务暂不可用。", "Shopping isn't available right now.")
        quantity = int(float(s.get("quantity", 1)))
        return await self.services.order(
            str(s.get("item", "")).strip(), quantity, str(s.get("unit", "")), lang
        )

    async def _order_status(self, s: Mapping[str, Any], lang: str, source: str, m: Match) -> str:
        if self.services is None:
            return _t(lang, "购物服务暂不可用。", "Shopping isn't available right now.")
        return await self.services.order_status(lang)

    async def _gov(self, s: Mapping[str, Any], lang: str, source: str, m: Match) -> str:
        if self.services is None:
            return _t(lang, "政务服务暂不可用。", "Government services aren't available right now.")
        return await self.services.gov_query(str(s.get("gov_service", "")), lang)

    # -- answering ------------------------------------------------------------------------

    async def _answer(self, answer: str, lang: str, u: Utterance) -> None:
        if not answer:
            return
        record = {"text": answer, "lang": lang, "to": u.source, "heard": u.text}
        self.replies.append(record)
        speaker = self._hub.get(u.source) if u.source else None
        if speaker is not None and "say" in speaker.info.settable and speaker.online:
            say = {"say": {"text": answer, "lang": lang, "priority": "normal"}}
            try:
                await self._hub.command(speaker.info.id, self._hub.validate(speaker.info.id, _json(say)))
                return
            except (CommandRejected, DeviceError) as exc:
                log.info("voice: could not answer on %s: %s", speaker.info.id, exc)
        self._hub.emit_event("voice_reply", record)


def _t(lang: str, zh: str, en: str) -> str:
    return zh if lang == "zh-CN" else en


def _kind(slots: Mapping[str, Any]) -> Kind | None:
    kind = slots.get("device_kind")
    return Kind(kind) if isinstance(kind, str) else kind if isinstance(kind, Kind) else None


async def _answer_now(text: str) -> str:
    return text


def _json(values: Mapping[str, Any]) -> bytes:
    return orjson.dumps(dict(values))


def _english_name(dev: Device | None) -> str:
    if dev is None:
        return "it"
    room = ROOMS_EN.get(dev.info.room, ("",))[0]
    kind = _KIND_EN.get(dev.info.kind, "")
    if dev.info.name.isascii():
        return f"the {dev.info.name}"
    return f"the {room} {kind}".replace("  ", " ").strip() if room or kind else dev.info.name
