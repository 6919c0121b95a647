"""A hostile LAN device against a real gateway: memory and the real devices' service during each attack.

One private home in the namespace: a secured Mosquitto (a login per device), the gateway as a
real process, a real TV (approved) and a real Tasmota plug with its own login. The baseline is
measured in the same run with no attack: a command from Home Assistant's login to the plug
through the contract, until the plug's new state is back on the contract (gateway → plug →
gateway), 40 times in a row. Then each `firmware-sim hostile` attack runs while the same
measurement repeats (the rogue device is a `firmware-sim hostile` process of its own), and the
gateway's resident memory is sampled every 50 ms. Aim: the daemon
stays under 150 MB and the real plug's round trip does not change.

Prints a table and writes bench/results/hostile.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import httpx
from _common import machine, percentile, rss_mb, save, show

from firmware_sim.tasmota import TasmotaPlug
from firmware_sim.terminal import TvSimulator
from gateway.broker import PrivateBroker
from gateway.logins import dynsec_config, write_private
from gateway.mqtt import Message, MqttClient
from gateway.netns import in_private_netns
from gateway.procs import Child

GW = "benchhl"
PLUG_MAC, ROGUE_MAC = "A4CF12B3C4D5", "02BADC0FFEE1"
PLUG = "tasmota-a4cf12b3c4d5"
TV_TXT_ID = "tv-5c0a1b2c3d4e"
TV = f"bfy-{TV_TXT_ID}"
AIM_RSS_MB = 150


class Contract:
    """The plug's state as Home Assistant sees it, and round trips through the gateway."""

    def __init__(self, client: MqttClient) -> None:
        self.client = client
        self.on: bool | None = None
        self.changed = asyncio.Event()
        client.subscribe(f"home/{GW}/device/{PLUG}/state", self._on_state)

    def _on_state(self, msg: Message) -> None:
        with contextlib.suppress(ValueError):
            self.on = json.loads(msg.payload).get("on")
            self.changed.set()

    async def round_trips(self, n: int) -> list[float]:
        out = []
        for _ in range(n):
            want = not self.on
            t0 = time.perf_counter()
            self.client.publish(f"home/{GW}/device/{PLUG}/set", json.dumps({"on": want}).encode(), qos=1)
            async with asyncio.timeout(10):
                while self.on is not want:
                    self.changed.clear()
                    await self.changed.wait()
            out.append((time.perf_counter() - t0) * 1000)
        return out


async def sample_rss(pid: int, peak: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], rss_mb(pid))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.05):
                await stop.wait()


async def under_attack(
    name: str, attack: Awaitable[None], contract: Contract, pid: int, n: int
) -> dict[str, Any]:
    """Run `attack` while measuring round trips (and once more right after it)."""
    peak = [rss_mb(pid)]
    before = peak[0]
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(pid, peak, stop))
    t0 = time.perf_counter()
    try:
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(attack)
            trips = await contract.round_trips(n)
            await task
            trips += await contract.round_trips(5)  # and right after it
    finally:
        stop.set()
        await sampler
    return {
        "attack": name,
        "p50_ms": round(percentile(trips, 50), 1),
        "p99_ms": round(percentile(trips, 99), 1),
        "rss_before_mb": round(before, 1),
        "rss_peak_mb": round(peak[0], 1),
        "rss_after_mb": round(rss_mb(pid), 1),
        "seconds": round(time.perf_counter() - t0, 1),
    }


async def _approve(api: httpx.AsyncClient, device: str) -> None:
    """The installer approves the TV once the gateway has found it (polled: it is not on MQTT)."""
    async with asyncio.timeout(30):
        while True:
            if (await api.post(f"/api/v1/devices/{device}/approve", json={})).status_code == 200:
                return
            await asyncio.sleep(0.2)


def _attacks(url: str, rogue: str, z2m: str) -> list[tuple[str, list[str]]]:
    """Each attack that costs the gateway something, as `firmware-sim hostile` arguments: the
    rogue device runs as a process of its own, so the measuring client is never slowed by it."""
    guessers = ",".join(f"127.0.0.{a}" for a in range(71, 77))
    attacks = {
        "none (baseline)": "",
        "nested JSON event (100,000 deep)": "nested-json --address 127.0.0.60 --duration-s 3",
        "150 MB /info": "huge-info --address 127.0.0.61 --duration-s 3",
        "150 MB event line": "huge-event --address 127.0.0.62 --duration-s 4",
        "230 fake terminals": "terminal-flood --address 127.0.0.63 --count 230 --duration-s 6",
        "impostor of the TV": f"impostor --address 127.0.0.64 --target-id {TV_TXT_ID} --duration-s 3",
        "CoAP bignum": "coap-bigint --address 127.0.0.65 --duration-s 4",
        "Tasmota config, 20,000 relays": f"tasmota-relays --mqtt {rogue} --mac {ROGUE_MAC}",
        "sensors for 1,500 MACs": f"tasmota-sensors --mqtt {rogue} --count 1500",
        "Zigbee2MQTT list of 10,000": f"z2m-devices --mqtt {z2m} --count 10000",
        "client-id takeover ×10": f"client-id-takeover --mqtt {rogue} --victim-client-id gateway-{GW} "
        "--count 10 --interval-s 0.2",
        "20 event streams, one client": f"http-streams --url {url} --count 20 --duration-s 3 "
        "--source-address 127.0.0.70",
        "30 PIN guesses, 6 addresses": f"http-pair-guess --url {url} --count 30 "
        f"--source-addresses {guessers}",
        "150 MB request body": f"http-big-body --url {url} --size-mb 150",
    }
    return [(name, args.split()) for name, args in attacks.items()]


async def rogue_device(args: list[str]) -> None:
    """One attack by `firmware-sim hostile`, a process of its own like a real rogue device."""
    if not args:
        return
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "firmware_sim.cli", "hostile", *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    if await proc.wait() != 0:
        raise SystemExit(f"firmware-sim hostile {args[0]} failed")


async def main(n: int) -> None:
    if not in_private_netns():
        raise SystemExit("run inside the private namespace: ./scripts/bench hostile")
    info = machine()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp_dir:
        tmp = Path(tmp_dir)
        password = secrets.token_urlsafe(16)
        write_private(tmp / "dynsec.json", json.dumps(dynsec_config("gateway", password)))
        tv = TvSimulator(address="127.0.0.31", device_id=TV_TXT_ID, name="客厅电视", keepalive_s=1.0)
        async with (
            PrivateBroker(workdir=tmp / "broker", dynsec_file=tmp / "dynsec.json") as broker,
            asyncio.TaskGroup() as tg,
        ):
            sims = [tg.create_task(tv.run())]
            await tv.wait_ready()
            gateway = Child(
                "gateway",
                [sys.executable, "-m", "gateway.cli", "run", "--mqtt", broker.url, "--state-dir",
                 str(tmp / "state"), "--id", GW, "--http", "127.0.0.1:0"],
                log_path=tmp / "gateway.log",
                ready=r" ready: ",
                env={**os.environ, "GATEWAY_MQTT__USERNAME": "gateway", "GATEWAY_MQTT__PASSWORD": password,
                     "GATEWAY_MQTT__DEVICE_LOGINS": "true", "GATEWAY_DISCOVERY__INTERFACES": "lo",
                     "GATEWAY_DISCOVERY__COAP_INTERVAL_S": "2", "GATEWAY_DISCOVERY__COAP_WINDOW_S": "0.5",
                     "GATEWAY_HOMEASSISTANT__ENABLED": "false"},
            )  # fmt: skip
            await gateway.start(timeout_s=30)
            assert gateway.pid is not None
            pid = gateway.pid
            try:
                state = tmp / "state"
                admin = {"Authorization": f"Bearer {(state / 'admin.token').read_text().strip()}"}
                url = (state / "http.url").read_text().strip()
                async with httpx.AsyncClient(base_url=url, headers=admin, timeout=30) as api:
                    logins = {}
                    for name, body in (
                        ("ha", {"kind": "homeassistant"}),
                        ("plug", {"kind": "tasmota", "mac": PLUG_MAC}),
                        ("rogue", {"kind": "tasmota", "mac": ROGUE_MAC}),
                        ("z2m", {"kind": "zigbee2mqtt"}),
                    ):
                        logins[name] = (await api.post("/api/v1/logins", json=body)).json()

                    def mqtt_url(name: str) -> str:
                        c = logins[name]
                        return f"mqtt://{c['username']}:{c['password']}@{broker.host}:{broker.port}"

                    plug = TasmotaPlug(mac=PLUG_MAC, power_on=False, tele_period_s=60)
                    sims.append(tg.create_task(plug.run(mqtt_url("plug"))))
                    await plug.wait_ready()
                    await _approve(api, TV)
                    ha = MqttClient(host=broker.host, port=broker.port, client_id="bench-ha", name="ha",
                                    username="homeassistant", password=logins["ha"]["password"])  # fmt: skip
                    contract = Contract(ha)
                    ha_task = tg.create_task(ha.run())
                    await ha.wait_connected(10)
                    async with asyncio.timeout(30):
                        while contract.on is None:
                            contract.changed.clear()
                            await contract.changed.wait()

                    attacks = _attacks(url, mqtt_url("rogue"), mqtt_url("z2m"))
                    for name, args in attacks:
                        rows.append(await under_attack(name, rogue_device(args), contract, pid, n))
                        print(
                            f"  {name}: p50 {rows[-1]['p50_ms']} ms, peak {rows[-1]['rss_peak_mb']} MB",
                            flush=True,
                        )
                    drops = (await api.get("/api/v1/health/detail")).json()["drops"]
                    await ha.close()
                    ha_task.cancel()
            finally:
                await gateway.stop()
                for task in sims:
                    task.cancel()
    base = rows[0]
    show(
        f"A hostile LAN device vs the gateway (plug round trips through the contract, {n} per attack)",
        ["attack", "round trip p50 ms", "p99 ms", "vs baseline p50", "gateway RSS peak MB", "after MB"],
        [
            [
                r["attack"],
                r["p50_ms"],
                r["p99_ms"],
                f"{r['p50_ms'] / base['p50_ms']:.2f}×",
                r["rss_peak_mb"],
                r["rss_after_mb"],
            ]
            for r in rows
        ],
        info,
    )
    worst = max(r["rss_peak_mb"] for r in rows)
    print(f"peak RSS {worst:.0f} MB (aim: under {AIM_RSS_MB} MB)")
    print(f"refused: {json.dumps(drops, ensure_ascii=False)}")
    save("hostile", {"machine": info, "rows": rows, "drops": drops, "aim_rss_mb": AIM_RSS_MB})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--round-trips", type=int, default=40, help="per attack (default 40)")
    asyncio.run(main(parser.parse_args().round_trips))
