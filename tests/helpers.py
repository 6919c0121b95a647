"""Test helpers: run the real gateway process, watch topics, publish like a device would."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.broker import PrivateBroker
from gateway.mqtt import Message, MqttClient
from gateway.procs import Child

#: Where the browser tests write their screenshots: the docs when UPDATE_SCREENSHOTS=1 (to refresh
#: docs/screenshots/), else a scratch folder, so a test run leaves the checkout as it was.
SCREENSHOTS = (
    Path(__file__).resolve().parents[1] / "docs" / "screenshots"
    if os.environ.get("UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "bfy-screenshots"
)


#: Every protocol approved on arrival: fixtures that are not about approval stand for a home
#: where the installer has already approved the terminals and CoAP devices it finds.
INSTALLER_APPROVED = ["tasmota", "zigbee2mqtt", "terminal", "coap"]


class Topics:
    """Everything seen on a set of topic filters, with waiting helpers (no sleeps)."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.retained: dict[str, bytes] = {}
        self._changed = asyncio.Event()

    def __call__(self, msg: Message) -> None:
        self.messages.append(msg)
        self.retained[msg.topic] = msg.payload
        self._changed.set()

    def json(self, topic: str) -> Any:
        return json.loads(self.retained[topic])

    async def wait(self, predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or predicate}") from None

    async def wait_message(
        self, match: Callable[[Message], bool], timeout: float = 10.0, what: str = ""
    ) -> Message:
        start = 0
        found: list[Message] = []

        def check() -> bool:
            nonlocal start
            for m in self.messages[start:]:
                if match(m):
                    found.append(m)
                    return True
            start = len(self.messages)
            return False

        await self.wait(check, timeout, what)
        return found[0]


async def wait_hub(hub: Any, predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Wait until `predicate()` holds, re-checking at every event on the hub's bus."""
    try:
        async with hub.bus.subscribe() as events, asyncio.timeout(timeout):
            while not predicate():
                await events.get()
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what or predicate}") from None


class Watcher:
    """`async with Watcher(broker, "home/#") as topics:` — a real MQTT client on the side."""

    def __init__(
        self,
        broker: PrivateBroker,
        *filters: str,
        name: str = "test-watcher",
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.client = MqttClient(
            host=broker.host,
            port=broker.port,
            client_id=name,
            name=name,
            reconnect_max_s=0.3,
            username=username,
            password=password,
        )
        self.topics = Topics()
        for f in filters:
            self.client.subscribe(f, self.topics)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Topics:
        self._task = asyncio.create_task(self.client.run(), name="watcher")
        await self.client.wait_connected(5)
        return self.topics

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


def mosquitto_pub(broker: PrivateBroker, topic: str, payload: str | bytes, *, retain: bool = False) -> None:
    data = payload.encode() if isinstance(payload, str) else payload
    cmd = ["mosquitto_pub", "-p", str(broker.port), "-t", topic, "-q", "1"]
    cmd += ["-s"] if data else ["-n"]  # -n: an empty message (clears a retained topic)
    if retain:
        cmd.append("-r")
    subprocess.run(cmd, input=data, check=True, timeout=10)


def gateway_child(
    broker: PrivateBroker, state_dir: Path, *, gateway_id: str = "t1", env: dict[str, str] | None = None,
    extra: tuple[str, ...] = (),
) -> Child:  # fmt: skip
    return Child(
        "gateway",
        [
            sys.executable, "-m", "gateway.cli", "run", "--mqtt", broker.url, "--state-dir", str(state_dir),
            "--id", gateway_id, "--http", "127.0.0.1:0", *extra,
        ],
        log_path=state_dir.parent / f"gateway-{gateway_id}.log",
        ready=r" ready: ",
        env={
            "GATEWAY_DISCOVERY__MDNS": "false",
            "GATEWAY_DISCOVERY__COAP": "false",
            "GATEWAY_DISCOVERY__AUTO_APPROVE": ",".join(INSTALLER_APPROVED),
            **(env or os.environ),
        },
    )  # fmt: skip


# fmt: off
TASMOTA_PLUG_CONFIG = {
    "ip": "192.168.10.20", "dn": "Tasmota", "fn": ["客厅插座", None, None, None, None, None, None, None],
    "hn": "tasmota-B3C4D5-1234", "mac": "A4CF12B3C4D5", "md": "Sonoff S31", "ty": 0, "if": 0,
    "ofln": "Offline", "onln": "Online", "state": ["OFF", "ON", "TOGGLE", "HOLD"], "sw": "14.2.0",
    "t": "tasmota_B3C4D5", "ft": "%prefix%/%topic%/", "tp": ["cmnd", "stat", "tele"],
    "rl": [1, 0, 0, 0, 0, 0, 0, 0], "swc": [-1] * 8, "swn": [None] * 8, "btn": [0] * 8,
    "so": {"4": 0, "11": 0, "13": 0, "17": 0, "20": 0, "30": 0, "68": 0, "73": 0, "82": 0,
           "114": 0, "117": 0},
    "lk": 0, "lt_st": 0, "bat": 0, "dslp": 0, "sho": [], "sht": [], "ver": 1,
}
# fmt: on
PLUG_ID = "tasmota-a4cf12b3c4d5"


def announce_tasmota_plug(broker: PrivateBroker) -> None:
    """What a real plug puts on the broker when it connects (retained)."""
    mosquitto_pub(
        broker,
        "tasmota/discovery/A4CF12B3C4D5/config",
        json.dumps(TASMOTA_PLUG_CONFIG),
        retain=True,
    )
    mosquitto_pub(broker, "tele/tasmota_B3C4D5/LWT", "Online", retain=True)
