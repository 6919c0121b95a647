"""Contract 1 on the local broker: the gateway's public face on the LAN.

Publishes `home/<gw>/status`, each approved device's `info`, `state` and `availability`
(retained), events, and Home Assistant discovery; takes `set` commands, validates them and
hands them to the hub. Everything retained is published again after every (re)connect, so a
broker that restarted without persistence is whole again within a second or two.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson

from gateway import homeassistant
from gateway.bus import Event
from gateway.errors import CommandRejected, DeviceError
from gateway.hub import Device, Hub
from gateway.model import DeviceInfo, iso_now
from gateway.mqtt import Message, MqttClient

__all__ = ["ContractStats", "MqttContract", "status_will"]

log = logging.getLogger(__name__)

_COMMAND_QUEUE = 1000
_ECHO_LIMIT = 512


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def status_topic(gateway_id: str) -> str:
    return f"home/{gateway_id}/status"


def status_will(gateway_id: str) -> tuple[str, bytes]:
    return status_topic(gateway_id), b"offline"


class ContractStats:
    __slots__ = ("commands", "dropped_commands", "errors", "republishes")

    def __init__(self) -> None:
        self.commands = 0
        self.errors = 0
        self.dropped_commands = 0
        self.republishes = 0


class MqttContract:
    """Binds the hub to the broker. `attach()` once, then `run()` as a task."""

    def __init__(
        self,
        hub: Hub,
        mqtt: MqttClient,
        *,
        gateway_id: str,
        state_qos: int = 0,
        ha_enabled: bool = True,
        ha_prefix: str = "homeassistant",
        ha_status_topic: str = "homeassistant/status",
    ) -> None:
        self._hub = hub
        self._mqtt = mqtt
        self._gw = gateway_id
        self._root = f"home/{gateway_id}"
        self._state_qos = state_qos
        self._ha = ha_enabled
        self._ha_prefix = ha_prefix
        self._ha_status = ha_status_topic
        self._ha_topics: dict[str, set[str]] = {}
        self._commands: asyncio.Queue[tuple[str, dict[str, Any], str]] = asyncio.Queue(_COMMAND_QUEUE)
        self._unsubscribe: list[Any] = []
        self.stats = ContractStats()
        self._alerts: dict[str, bytes] = {}  # active alerts, retained on home/<gw>/alert/<id>
        self._last_warn: dict[str, float] = {}

    def attach(self) -> None:
        self._unsubscribe += [
            self._mqtt.subscribe(f"{self._root}/device/+/set", self._on_set, qos=1),
            self._mqtt.subscribe(f"{self._root}/voice/in", self._on_voice, qos=1),
            self._mqtt.on_connect(self.republish),
            self._hub.bus.listen(self._on_event),
        ]
        if self._ha:
            self._unsubscribe.append(self._mqtt.subscribe(self._ha_status, self._on_ha_status))

    def detach(self) -> None:
        for undo in self._unsubscribe:
            undo()
        self._unsubscribe.clear()

    # -- publishing ---------------------------------------------------------------------

    def republish(self) -> None:
        """Everything retained, again (after a connect, or Home Assistant's birth)."""
        self.stats.republishes += 1
        self._mqtt.publish(status_topic(self._gw), b"online", qos=1, retain=True)
        if self._ha:
            topic, payload = homeassistant.bridge_config(self._gw, self._ha_prefix)
            self._mqtt.publish(topic, _dumps(payload), qos=1, retain=True)
        for dev in self._hub.devices(approved=True):
            self._publish_device(dev)
        for alert_id, body in self._alerts.items():
            self._mqtt.publish(f"{self._root}/alert/{alert_id}", body, qos=1, retain=True)

    def _publish_device(self, dev: Device) -> None:
        base = f"{self._root}/device/{dev.info.id}"
        self._mqtt.publish(f"{base}/info", _dumps(_info_payload(dev.info)), qos=1, retain=True)
        if dev.state:
            self._publish_state(dev)
        self._publish_availability(dev)
        if self._ha:
            self._publish_ha(dev.info)

    def _publish_state(self, dev: Device) -> None:
        self._mqtt.publish(
            f"{self._root}/device/{dev.info.id}/state",
            _dumps(dev.state_payload()),
            qos=self._state_qos,
            retain=True,
        )

    def _publish_availability(self, dev: Device) -> None:
        self._mqtt.publish(
            f"{self._root}/device/{dev.info.id}/availability",
            b"online" if dev.online else b"offline",
            qos=1,
            retain=True,
        )

    def _publish_ha(self, info: DeviceInfo) -> None:
        configs = homeassistant.device_configs(self._gw, info, self._ha_prefix)
        for stale in self._ha_topics.get(info.id, set()) - configs.keys():
            self._mqtt.publish(stale, b"", qos=1, retain=True)
        for topic, payload in configs.items():
            self._mqtt.publish(topic, _dumps(payload), qos=1, retain=True)
        self._ha_topics[info.id] = set(configs)

    def _clear_device(self, device_id: str, info: DeviceInfo) -> None:
        base = f"{self._root}/device/{device_id}"
        for leaf in ("info", "state", "availability"):
            self._mqtt.publish(f"{base}/{leaf}", b"", qos=1, retain=True)
        topics = set(self._ha_topics.pop(device_id, set()))
        if self._ha:
            topics |= homeassistant.device_configs(self._gw, info, self._ha_prefix).keys()
        for topic in topics:
            self._mqtt.publish(topic, b"", qos=1, retain=True)

    def _on_event(self, event: Event) -> None:
        if event.kind == "event":
            if event.device_id == "alert":
                alert_id = str(event.data.get("id", ""))
                body = self._alerts[alert_id] = _dumps(event.data)
                self._mqtt.publish(f"{self._root}/alert/{alert_id}", body, qos=1, retain=True)
            elif event.device_id == "alert_cleared":
                alert_id = str(event.data.get("id", ""))
                self._alerts.pop(alert_id, None)
                self._mqtt.publish(f"{self._root}/alert/{alert_id}", b"", qos=1, retain=True)
            self._mqtt.publish(f"{self._root}/event/{event.device_id}", _dumps(event.data), qos=1)
            return
        if event.kind == "removed":
            if event.data.get("approved"):
                self._clear_device(event.device_id, event.data["info"])
            return
        dev = self._hub.get(event.device_id)
        if dev is None or not dev.row.approved:
            return
        if event.kind == "state":
            self._publish_state(dev)
        elif event.kind == "availability":
            self._publish_availability(dev)
        elif event.kind == "info":
            self._publish_device(dev)

    def _on_voice(self, msg: Message) -> None:
        """`home/<gw>/voice/in`: a transcript from any LAN client (Contract 1)."""
        try:
            data = orjson.loads(msg.payload)
        except orjson.JSONDecodeError:
            data = None
        text = data.get("text") if isinstance(data, dict) else None
        if not isinstance(text, str) or not text.strip() or len(text) > 500:
            self._error(
                "",
                "invalid_voice",
                'voice/in takes {"text": "...", "lang": "zh-CN", "source": "<device id>"}',
                msg.payload,
            )
            return
        lang = data.get("lang") if isinstance(data.get("lang"), str) else "zh-CN"
        source = data.get("source") if isinstance(data.get("source"), str) else ""
        self._hub.emit_event("voice", {"text": text.strip(), "lang": lang[:16], "source": source[:64]})

    def _on_ha_status(self, msg: Message) -> None:
        # Home Assistant's birth message: it has (re)started and needs discovery again.
        if msg.payload == b"online" and not msg.retain:
            log.info("Home Assistant came online; republishing discovery")
            self.republish()

    # -- commands -----------------------------------------------------------------------

    def _on_set(self, msg: Message) -> None:
        parts = msg.topic.split("/")
        device_id = parts[3] if len(parts) == 5 else ""
        if msg.retain:
            # A retained command would run again on every reconnect: refuse it.
            self._error(device_id, "retained_command", "commands must not be retained", msg.payload)
            return
        try:
            values = self._hub.validate(device_id, msg.payload)
        except CommandRejected as exc:
            self._error(device_id, exc.reason, exc.detail, msg.payload)
            return
        try:
            self._commands.put_nowait((device_id, values, msg.topic))
        except asyncio.QueueFull:
            self.stats.dropped_commands += 1
            self._error(device_id, "busy", "too many commands waiting; try again", msg.payload)

    async def run(self) -> None:
        """Execute queued commands: in order per device, several devices at once."""
        async with asyncio.TaskGroup() as tg:
            while True:
                device_id, values, _topic = await self._commands.get()
                self.stats.commands += 1
                tg.create_task(self._execute(device_id, values), name=f"command-{device_id}")

    async def _execute(self, device_id: str, values: dict[str, Any]) -> None:
        try:
            await self._hub.command(device_id, values)
        except (DeviceError, CommandRejected) as exc:
            self._error(device_id, exc.reason, exc.detail, _dumps(values))
        except Exception as exc:  # one device's failure never stops the others
            log.exception("command for %s failed", device_id)
            self._error(device_id, "internal_error", type(exc).__name__, _dumps(values))

    def _error(self, device_id: str, reason: str, detail: str, payload: bytes) -> None:
        """Tell the sender (on `event/error`) and the log (once per device and reason a minute)."""
        self.stats.errors += 1
        now = time.monotonic()
        key = f"{device_id}:{reason}"
        if now - self._last_warn.get(key, -1e9) > 60:
            self._last_warn[key] = now
            log.warning("command for %s refused: %s (%s)", device_id or "?", reason, detail)
        self._mqtt.publish(
            f"{self._root}/event/error",
            _dumps(
                {
                    "device": device_id,
                    "reason": reason,
                    "detail": detail,
                    "command": payload[:_ECHO_LIMIT].decode("utf-8", errors="replace"),
                    "ts": iso_now(),
                }
            ),
            qos=1,
        )


def _info_payload(info: DeviceInfo) -> dict[str, Any]:
    data = info.model_dump(mode="json")
    if not data["ranges"]:
        del data["ranges"]
    return data
