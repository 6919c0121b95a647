"""Discovery benchmark (runs in a private network namespace: ./scripts/bench discovery).

- mDNS: 50 operator terminals start at once; latency from each simulator's start to its
  `info` on the broker (p50/p99).
- CoAP: 50 CoAP devices; latency from start to `info` (bounded by the discovery period).
- Observe → state: a CoAP input changes; latency to the gateway's `state` publish.
- Resident memory and idle CPU of the gateway with 100 discovered devices, against the same
  gateway with none.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_seconds, machine, percentile, rss_mb, save, show

from firmware_sim.coap import CoapDevice
from firmware_sim.terminal import TvSimulator
from gateway.broker import PrivateBroker
from gateway.mqtt import Message, MqttClient
from gateway.netns import in_private_netns
from gateway.procs import Child

GW = "bench"


class InfoWatch:
    def __init__(self) -> None:
        self.first_info: dict[str, float] = {}
        self.states: list[tuple[float, str, dict[str, Any]]] = []
        self.changed = asyncio.Event()

    def __call__(self, msg: Message) -> None:
        now = time.perf_counter()
        parts = msg.topic.split("/")
        if len(parts) != 5 or not msg.payload:
            return
        if parts[4] == "info":
            self.first_info.setdefault(parts[3], now)
        elif parts[4] == "state":
            self.states.append((now, parts[3], json.loads(msg.payload)))
        self.changed.set()

    async def until(self, predicate: Any, limit_s: float) -> None:
        async with asyncio.timeout(limit_s):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


async def idle_cpu_percent(pid: int, seconds: float) -> float:
    before = cpu_seconds(pid)
    await asyncio.sleep(seconds)
    return (cpu_seconds(pid) - before) / seconds * 100


async def main(n: int, coap_interval_s: float, idle_s: float) -> None:
    if not in_private_netns():
        raise SystemExit("run inside the private namespace: ./scripts/bench discovery")
    info = machine()
    rows: list[list[Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-disc-") as tmp:
        async with PrivateBroker(workdir=Path(tmp) / "b") as broker:
            env = {
                **os.environ,
                "GATEWAY_DISCOVERY__INTERFACES": "lo",
                "GATEWAY_DISCOVERY__COAP_INTERVAL_S": str(coap_interval_s),
                "GATEWAY_DISCOVERY__COAP_WINDOW_S": "1.0",
                "GATEWAY_HOMEASSISTANT__ENABLED": "false",
                # measured as found by discovery: everything is approved on arrival
                "GATEWAY_DISCOVERY__AUTO_APPROVE": "tasmota,zigbee2mqtt,terminal,coap",
            }
            gateway = Child(
                "gateway",
                [
                    sys.executable,
                    "-m",
                    "gateway.cli",
                    "run",
                    "--mqtt",
                    broker.url,
                    "--state-dir",
                    f"{tmp}/state",
                    "--id",
                    GW,
                    "--http",
                    "127.0.0.1:0",
                ],
                log_path=Path(tmp) / "gateway.log",
                ready=r" ready: ",
                env=env,
            )
            await gateway.start()
            assert gateway.pid is not None
            await asyncio.sleep(3)
            empty_rss = rss_mb(gateway.pid)
            empty_cpu = await idle_cpu_percent(gateway.pid, idle_s)

            watch = InfoWatch()
            client = MqttClient(host=broker.host, port=broker.port, client_id="bench-watch", name="watch")
            client.subscribe(f"home/{GW}/device/+/+", watch)
            async with asyncio.TaskGroup() as tg:
                ct = tg.create_task(client.run())
                await client.wait_connected(5)

                # mDNS terminals.
                tvs = [
                    TvSimulator(
                        address=f"127.0.1.{i + 1}",
                        device_id=f"tv-bench{i:06d}",
                        name=f"电视{i:02d}",
                        keepalive_s=15,
                    )
                    for i in range(n)
                ]
                started: dict[str, float] = {}
                announced: dict[str, float] = {}

                async def run_tv(tv: TvSimulator) -> None:
                    started[f"bfy-{tv.device_id}"] = time.perf_counter()
                    await tv.run()

                async def mark_ready(tv: TvSimulator) -> None:
                    await tv.wait_ready()
                    announced[f"bfy-{tv.device_id}"] = time.perf_counter()

                tv_tasks = [tg.create_task(run_tv(tv)) for tv in tvs]
                marks = [tg.create_task(mark_ready(tv)) for tv in tvs]
                await watch.until(
                    lambda: all(k in watch.first_info for k in started) and len(started) == n, 120
                )
                await asyncio.gather(*marks)
                mdns_total = [watch.first_info[k] - started[k] for k in started]
                mdns_after = [watch.first_info[k] - announced[k] for k in started]

                # CoAP devices (each on its own address).
                coaps = [
                    CoapDevice(
                        kind="climate",
                        address=f"127.0.2.{i + 1}",
                        serial=f"BENCH-{i:06d}",
                        name=f"温湿度{i:02d}",
                        report_interval_s=120.0,
                    )
                    for i in range(n)
                ]
                coap_started: dict[str, float] = {}

                async def run_coap(dev: CoapDevice) -> None:
                    coap_started[f"coap-{dev.serial.lower()}"] = time.perf_counter()
                    await dev.run()

                coap_tasks = [tg.create_task(run_coap(d)) for d in coaps]
                await watch.until(
                    lambda: len(coap_started) == n and all(k in watch.first_info for k in coap_started), 180
                )
                coap_total = [watch.first_info[k] - coap_started[k] for k in coap_started]

                # Observe → state: flip a smoke detector's input; time to the gateway's state.
                smoke = CoapDevice(
                    kind="smoke",
                    address="127.0.3.1",
                    serial="BENCH-SMOKE",
                    name="烟感",
                    report_interval_s=120.0,
                )
                smoke_task = tg.create_task(smoke.run())
                await watch.until(lambda: "coap-bench-smoke" in watch.first_info, 120)
                await asyncio.sleep(1)
                observe: list[float] = []
                for i in range(40):
                    value = i % 2 == 0
                    t0 = time.perf_counter()
                    smoke.set_input(value)
                    await watch.until(
                        lambda v=value, t=t0: any(
                            ts > t and d == "coap-bench-smoke" and s.get("smoke") is v
                            for ts, d, s in watch.states
                        ),
                        10,
                    )
                    t1 = next(
                        ts
                        for ts, d, s in watch.states
                        if ts > t0 and d == "coap-bench-smoke" and s.get("smoke") is value
                    )
                    observe.append(t1 - t0)

                await asyncio.sleep(3)
                full_rss = rss_mb(gateway.pid)
                full_cpu = await idle_cpu_percent(gateway.pid, idle_s)
                await client.close()
                ct.cancel()
                for t in [*tv_tasks, *coap_tasks, smoke_task]:
                    t.cancel()
                tg.create_task(gateway.stop())

    ms = 1000
    rows.append(
        [
            f"mDNS: {n} terminals, start → info",
            f"{percentile(mdns_total, 50) * ms:.0f} / {percentile(mdns_total, 99) * ms:.0f} ms",
            "from the simulator's start, its own mDNS probing included",
        ]
    )
    rows.append(
        [
            f"CoAP: {n} devices, start → info",
            f"{percentile(coap_total, 50) * ms:.0f} / {percentile(coap_total, 99) * ms:.0f} ms",
            f"discovery every {coap_interval_s:g} s",
        ]
    )
    rows.append(
        [
            "CoAP Observe → state (40 changes)",
            f"{percentile(observe, 50) * ms:.1f} / {percentile(observe, 99) * ms:.1f} ms",
            "",
        ]
    )
    rows.append(
        ["resident memory: 0 / 2n devices", f"{empty_rss:.1f} / {full_rss:.1f} MB", f"{2 * n} devices"]
    )
    rows.append(
        [
            f"idle CPU over {idle_s:g} s: 0 / 2n devices",
            f"{empty_cpu:.2f}% / {full_cpu:.2f}%",
            "one core = 100%",
        ]
    )
    show("Discovery (p50 / p99)", ["measure", "value", "note"], rows, info)
    save("discovery", {"machine": info, "rows": rows, "mdns_total": mdns_total, "mdns_after": mdns_after,
                       "coap_total": coap_total, "observe": observe})  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=50, help="devices per protocol")
    parser.add_argument(
        "--coap-interval", type=float, default=5.0, help="gateway's CoAP discovery period (s)"
    )
    parser.add_argument("--idle", type=float, default=20.0, help="idle CPU window (s)")
    a = parser.parse_args()
    asyncio.run(main(a.devices, a.coap_interval, a.idle))
