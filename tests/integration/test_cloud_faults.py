"""Faults on the cloud link, with the real agent, outbox, broker and cloud.

- The cloud broker is killed (SIGKILL: it loses what it queued) while 10,000 events flow up.
- The gateway's link process is killed with SIGKILL at random moments, again and again.
- The link is cut, stalled, slowed and made lossy (nftables in this test's private network
  namespace) under a running gateway, which keeps serving the home and catches up afterwards.

In every case: each accepted event is stored by the cloud exactly once, in order per device.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from cloud_bridge.agent import CloudAgent
from cloud_bridge.outbox import MessageClass, Outbox
from gateway.broker import PrivateBroker
from gateway.daemon import OUTBOX_FILE
from gateway.netns import in_private_netns
from tests.helpers import PLUG_ID, Watcher, announce_tasmota_plug, gateway_child, mosquitto_pub
from tests.integration.cloud_harness import CloudHarness, install_identity, running_cloud
from tests.tcpproxy import FaultProxy

pytestmark = pytest.mark.netns


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[CloudHarness]:
    async with running_cloud(tmp_path / "cloud", f"sqlite://{tmp_path / 'cloud.sqlite3'}") as harness:
        yield harness


async def stored_events(cloud: CloudHarness, gateway_id: str) -> list[Any]:
    assert cloud.cloud.db is not None
    return await cloud.cloud.db.uplinks(gateway_id=gateway_id, type_="event", limit=10_000_000)


def check_once_in_order(rows: list[Any], key: Callable[[dict[str, Any]], Any] = lambda p: p["seq"]) -> None:
    """Every event once; per device, storage order (n) is sending order."""
    keys = [(r.device, key(r.payload)) for r in rows]
    assert len(keys) == len(set(keys)), "an event was stored twice"
    per_device: dict[str, list[Any]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: r.n):
        per_device[r.device].append(key(r.payload))
    for device, order in per_device.items():
        assert order == sorted(order), f"{device}: stored out of order"


async def wait_for(check: Callable[[], Any], what: str, timeout: float) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not await check():
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}") from None


async def test_cloud_broker_killed_while_10000_events_flow_up(cloud: CloudHarness, tmp_path: Path) -> None:
    prov = await cloud.provision("gw-f1")
    identity = install_identity(prov, tmp_path / "gw")
    broker = cloud.cloud.broker
    assert broker is not None
    total, devices = 10_000, 20
    async with Outbox(tmp_path / "gw" / OUTBOX_FILE) as outbox:
        agent = CloudAgent(identity, outbox, ack_timeout_s=3.0, reconnect_max_s=0.5)
        link = asyncio.create_task(agent.run())
        sent = 0

        async def device(d: int) -> None:
            nonlocal sent
            for i in range(d, total, devices):
                await agent.send("event", {"device": f"d{d}", "seq": i}, MessageClass.EVENT)
                sent += 1

        async def outage() -> None:
            while sent < total // 4:
                await asyncio.sleep(0.01)
            await broker.kill()  # SIGKILL: its queues are gone
            await asyncio.sleep(1.0)  # the outage lasts a second
            await broker.start()

        await asyncio.gather(*(device(d) for d in range(devices)), outage())

        async def all_stored() -> bool:
            return len(await stored_events(cloud, "gw-f1")) >= total

        await wait_for(all_stored, "all 10,000 events stored", 120)
        rows = await stored_events(cloud, "gw-f1")
        assert len(rows) == total
        check_once_in_order(rows)
        assert agent.mqtt.stats.connects >= 2  # the outage really cut the link

        async def drained() -> bool:
            return len(outbox) == 0

        await wait_for(drained, "every event acknowledged and removed from the outbox", 30)
        await agent.close()
        link.cancel()


async def _read_accepted(
    proc: asyncio.subprocess.Process, accepted: set[tuple[int, int]], until: int
) -> bool:
    """Read `accepted R I` lines until `until` of this run are seen; False if it finished first."""
    assert proc.stdout is not None
    seen = 0
    while seen < until:
        async with asyncio.timeout(30):
            line = await proc.stdout.readline()
        if not line or line.startswith(b"all accepted"):
            return False
        _, run, i = line.split()
        accepted.add((int(run), int(i)))
        seen += 1
    return True


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_kill_9_of_the_link_process_at_random_moments_loses_nothing(
    cloud: CloudHarness, tmp_path: Path
) -> None:
    prov = await cloud.provision("gw-k9")
    state = tmp_path / "gw"
    install_identity(prov, state)
    rng = random.Random(9)
    accepted: set[tuple[int, int]] = set()
    cycles = 50
    for run in range(cycles):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.fault_agent", str(state), str(run),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            await _read_accepted(proc, accepted, rng.randint(1, 400))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            rest, _ = await proc.communicate()
        for line in rest.splitlines():
            if line.startswith(b"accepted "):
                _, r, i = line.split()
                accepted.add((int(r), int(i)))
    # A last run, left alone, sends what the killed ones left in the outbox.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fault_agent", str(state), str(cycles), "--count", "10",
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await _read_accepted(proc, accepted, 10)

        async def all_stored() -> bool:
            rows = await stored_events(cloud, "gw-k9")
            return {(r.payload["run"], r.payload["seq"]) for r in rows} >= accepted

        await wait_for(all_stored, f"all {len(accepted)} accepted events stored", 120)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.communicate()
    rows = await stored_events(cloud, "gw-k9")
    check_once_in_order(rows, key=lambda p: (p["run"], p["seq"]))
    assert len(accepted) > cycles  # it really ran


def _nft(*rules: str) -> None:
    subprocess.run(["nft", "-f", "-"], input="\n".join(rules).encode(), check=True, timeout=10)


async def test_link_cut_stalled_slowed_and_lossy_the_home_keeps_working_and_catches_up(
    cloud: CloudHarness, broker: PrivateBroker, tmp_path: Path
) -> None:
    assert in_private_netns(), "nftables rules are only set inside the test's private namespace"
    prov = await cloud.provision("gw-link")
    upstream = cloud.cloud.broker
    assert upstream is not None
    state = tmp_path / "gw" / "state"
    async with FaultProxy(upstream.host, upstream.port) as proxy:
        install_identity(prov, state, mqtt_url=f"mqtts://127.0.0.1:{proxy.port}")
        announce_tasmota_plug(broker)
        env = {
            **os.environ,
            "GATEWAY_CLOUD__TELEMETRY_INTERVAL_S": "0.5",
            "GATEWAY_CLOUD__ACK_TIMEOUT_S": "3",
        }
        async with (
            Watcher(broker, "cmnd/#", "home/gw-link/device/#") as local,
            gateway_child(broker, state, gateway_id="gw-link", env=env) as gw,
        ):
            assert cloud.cloud.db is not None

            async def cloud_power() -> str | None:
                shadows = {d.device_id: d for d in await cloud.cloud.db.devices("gw-link")}  # type: ignore[union-attr]
                plug = shadows.get(PLUG_ID)
                return None if plug is None else plug.state.get("on")

            async def plug_round(power: str, during: str) -> None:
                """The household switches the plug: the gateway relays it and reports the new
                state locally, whatever the cloud link is doing."""
                want = power == "ON"
                n = len(local.messages)
                mosquitto_pub(broker, f"home/gw-link/device/{PLUG_ID}/set", json.dumps({"on": want}))
                await local.wait_message(
                    lambda m: m.topic == "cmnd/tasmota_B3C4D5/POWER" and m.payload.decode().upper() == power,
                    what=f"the command relayed while the link is {during}",
                )
                mosquitto_pub(broker, "stat/tasmota_B3C4D5/RESULT", json.dumps({"POWER": power}))
                await local.wait(
                    lambda: any(
                        m.topic == f"home/gw-link/device/{PLUG_ID}/state"
                        and json.loads(m.payload).get("on") is want
                        for m in local.messages[n:]
                    ),
                    what=f"the state reported locally while the link is {during}",
                )

            async def cloud_has(want: bool) -> None:
                await wait_for(lambda: _is(cloud_power(), want), f"the cloud shadow on={want}", 60)

            await plug_round("ON", "up")
            await cloud_has(True)

            faults: list[tuple[str, Callable[[], None], Callable[[], None]]] = [
                ("cut", proxy.cut, proxy.heal),
                ("stalled", proxy.stall, proxy.heal),
                ("slow", lambda: proxy.slow(0.2), proxy.heal),
                (
                    "lossy",
                    lambda: _nft(
                        "table inet faults {",
                        "  chain in { type filter hook input priority 0; policy accept;",
                        f"    tcp dport {proxy.port} numgen random mod 100 < 25 drop",
                        f"    tcp sport {proxy.port} numgen random mod 100 < 25 drop",
                        "  }",
                        "}",
                    ),
                    lambda: _nft("delete table inet faults"),
                ),
            ]
            want = True
            for name, start, end in faults:
                start()
                try:
                    want = not want  # one switch per fault: the shadow must change to follow it
                    await plug_round("ON" if want else "OFF", name)
                finally:
                    end()
                await cloud_has(want)
            assert gw.running


async def _is(value: Any, want: Any) -> bool:
    return bool(await value == want)
