"""Relay benchmark: simulated device state updates → normalized `home/<gw>/device/<id>/state`.

Measures, on one private Mosquitto, in one run:
- throughput: `mosquitto_pub -l` → broker → `mosquitto_sub` (baseline) against
  `mosquitto_pub -l` (Zigbee2MQTT-shaped updates) → gateway → `mosquitto_sub` on its state topic;
- latency p50/p99 at several offered loads, spread over 200 devices, against the same load sent
  straight through the broker (baseline);
- gateway start-to-ready time, resident memory idle and with 200 devices, and a bare Python
  interpreter's memory as the floor.
Prints a table and writes bench/results/relay.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, percentile, rss_mb, save, show

from gateway.broker import PrivateBroker
from gateway.mqtt import Message, MqttClient
from gateway.procs import Child

GW = "bench"
DEVICES = 200


def z2m_devices(n: int) -> list[dict[str, Any]]:
    exposes = [
        {"type": "numeric", "name": "energy", "property": "energy", "access": 1, "unit": "kWh"},
        {
            "type": "numeric",
            "name": "temperature",
            "property": "temperature",
            "access": 1,
            "unit": "°C",
        },
        {
            "type": "numeric",
            "name": "linkquality",
            "property": "linkquality",
            "access": 1,
            "unit": "lqi",
        },
    ]
    out: list[dict[str, Any]] = [
        {
            "ieee_address": "0x00124b0000000000",
            "type": "Coordinator",
            "friendly_name": "Coordinator",
            "definition": None,
        }
    ]
    for i in range(n):
        out.append(
            {
                "ieee_address": f"0x00158d00{i:08x}",
                "type": "EndDevice",
                "friendly_name": f"bench_{i:03d}",
                "supported": True,
                "disabled": False,
                "interview_completed": True,
                "definition": {
                    "model": "BENCH-1",
                    "vendor": "Bench",
                    "description": "bench meter",
                    "exposes": exposes,
                },
            }
        )
    return out


def dev_id(i: int) -> str:
    return f"zigbee-00158d00{i:08x}"


async def pub_lines(port: int, topic: str, lines: bytes) -> None:
    proc = await asyncio.create_subprocess_exec(
        "mosquitto_pub", "-p", str(port), "-t", topic, "-l", stdin=subprocess.PIPE
    )
    await proc.communicate(lines)


async def pipe_rate(
    port: int, pub_topic: str, sub_topic: str, n: int, line: bytes = b'{"energy": %d}'
) -> tuple[float, int]:
    """Messages/s from `mosquitto_pub -l` to a `mosquitto_sub` reading `sub_topic`."""
    sub = await asyncio.create_subprocess_exec(
        "mosquitto_sub", "-p", str(port), "-t", sub_topic, stdout=subprocess.PIPE
    )
    assert sub.stdout is not None

    # Wait until the subscriber really receives (no sleep): send a sync update until one arrives.
    async def sync() -> None:
        while True:
            await pub_lines(port, pub_topic, line % -1 + b"\n")
            try:
                async with asyncio.timeout(0.5):
                    await sub.stdout.readline()  # type: ignore[union-attr]
                return
            except TimeoutError:
                continue

    async with asyncio.timeout(20):
        await sync()
    data = b"".join(line % i + b"\n" for i in range(n))
    t0 = time.perf_counter()
    pub = asyncio.create_task(pub_lines(port, pub_topic, data))
    got = 0
    try:
        async with asyncio.timeout(120):
            while got < n:
                chunk = await sub.stdout.read(1 << 20)
                if not chunk:
                    break
                got += chunk.count(b"\n")
    except TimeoutError:
        pass
    elapsed = time.perf_counter() - t0
    await pub
    sub.terminate()
    await sub.wait()
    return n / elapsed if got >= n else got / elapsed, got


async def latency(
    port: int, rate: int, seconds: float, *, via_gateway: bool
) -> tuple[float, float, int, int]:
    """Offered load `rate` msg/s over DEVICES devices; returns (p50 ms, p99 ms, sent, received)."""
    sent_at: dict[int, float] = {}
    lat: list[float] = []
    done = asyncio.Event()
    total = int(rate * seconds)

    def on(msg: Message) -> None:
        try:
            seq = int(json.loads(msg.payload)["energy"])
        except (ValueError, KeyError, TypeError):
            return
        t = sent_at.pop(seq, None)
        if t is not None:
            lat.append((time.perf_counter() - t) * 1000)
            if len(lat) >= total:
                done.set()

    rx = MqttClient(host="127.0.0.1", port=port, client_id=f"bench-rx-{rate}-{via_gateway}", name="rx")
    tx = MqttClient(host="127.0.0.1", port=port, client_id=f"bench-tx-{rate}-{via_gateway}", name="tx")
    rx.subscribe(f"home/{GW}/device/+/state" if via_gateway else "raw/+", on)
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(rx.run()), tg.create_task(tx.run())]
        await rx.wait_connected(5)
        await tx.wait_connected(5)
        await asyncio.sleep(
            0.2
        )  # let the SUBACK land before we start the clock (not a sync point for results)
        loop = asyncio.get_running_loop()
        start = loop.time()
        seq = 0
        while seq < total:
            due = min(total, int((loop.time() - start) * rate) + 1)
            while seq < due:
                i = seq % DEVICES
                topic = f"zigbee2mqtt/bench_{i:03d}" if via_gateway else f"raw/{i}"
                sent_at[seq] = time.perf_counter()
                tx.publish(topic, b'{"energy": %d, "linkquality": 99}' % seq)
                seq += 1
            await asyncio.sleep(0.001)
        try:
            async with asyncio.timeout(10):
                await done.wait()
        except TimeoutError:
            pass
        await rx.close()
        await tx.close()
        for t in tasks:
            t.cancel()
    return percentile(lat, 50), percentile(lat, 99), total, len(lat)


async def bare_python_rss() -> float:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import asyncio, sys; sys.stdout.write('x\\n'); sys.stdout.flush(); asyncio.run(asyncio.sleep(30))",
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    await proc.stdout.readline()
    rss = rss_mb(proc.pid)
    proc.kill()
    await proc.wait()
    return rss


async def main(n: int, seconds: float, loads: list[int]) -> None:
    info = machine()
    results: dict[str, Any] = {"machine": info}
    rows: list[list[Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp:
        async with PrivateBroker(workdir=Path(tmp) / "broker") as broker:
            raw_rate, raw_got = await pipe_rate(broker.port, "raw/x", "raw/x", n)
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
                env={**os.environ, "GATEWAY_HOMEASSISTANT__ENABLED": "false"},
            )
            t0 = time.perf_counter()
            await gateway.start()
            ready_s = time.perf_counter() - t0
            assert gateway.pid is not None
            await asyncio.sleep(2.0)  # settle before reading idle memory
            idle_rss = rss_mb(gateway.pid)

            # 200 devices appear, each reports once.
            seen: set[str] = set()
            all_seen = asyncio.Event()

            def on_info(msg: Message) -> None:
                seen.add(msg.topic)
                if len(seen) >= DEVICES:
                    all_seen.set()

            watch = MqttClient(host=broker.host, port=broker.port, client_id="bench-watch", name="watch")
            watch.subscribe(f"home/{GW}/device/+/state", on_info)
            async with asyncio.TaskGroup() as tg:
                wt = tg.create_task(watch.run())
                await watch.wait_connected(5)
                await broker_publish(broker.port, "zigbee2mqtt/bridge/state", b'{"state":"online"}')
                await broker_publish(
                    broker.port,
                    "zigbee2mqtt/bridge/devices",
                    json.dumps(z2m_devices(DEVICES)).encode(),
                )
                for i in range(DEVICES):
                    await broker_publish(
                        broker.port,
                        f"zigbee2mqtt/bench_{i:03d}",
                        b'{"energy": 1, "temperature": 21.5}',
                        retain=False,
                    )
                async with asyncio.timeout(30):
                    await all_seen.wait()
                await watch.close()
                wt.cancel()
            await asyncio.sleep(2.0)
            loaded_rss = rss_mb(gateway.pid)

            gw_rate, gw_got = await pipe_rate(
                broker.port, "zigbee2mqtt/bench_000", f"home/{GW}/device/{dev_id(0)}/state", n
            )
            lat_rows = []
            for rate in loads:
                raw = await latency(broker.port, rate, seconds, via_gateway=False)
                via = await latency(broker.port, rate, seconds, via_gateway=True)
                lat_rows.append((rate, raw, via))
            await gateway.stop()
            bare = await bare_python_rss()

    rows.append(
        [
            "throughput (msg/s)",
            f"{raw_rate:,.0f}",
            f"{gw_rate:,.0f}",
            f"{gw_rate / raw_rate:.0%} of raw (target ≥ 25%)",
        ]
    )
    for rate, raw, via in lat_rows:
        rows.append(
            [
                f"p50 / p99 latency @ {rate}/s (ms)",
                f"{raw[0]:.2f} / {raw[1]:.2f}",
                f"{via[0]:.2f} / {via[1]:.2f}",
                f"received {via[3]}/{via[2]}" + (" (target p99 < 10 ms)" if rate == 500 else ""),
            ]
        )
    rows.append(["ready after start (s)", "", f"{ready_s:.2f}", "target < 3 s"])
    rows.append(["resident memory idle (MB)", f"{bare:.1f} (bare Python)", f"{idle_rss:.1f}", ""])
    rows.append([f"resident memory, {DEVICES} devices (MB)", "", f"{loaded_rss:.1f}", "target < 60 MB"])
    show(
        "Relay: device update → home/<gw>/device/<id>/state",
        ["measure", "baseline (broker only)", "gateway", "note"],
        rows,
        info,
    )
    results.update(
        throughput={
            "raw": raw_rate,
            "raw_received": raw_got,
            "gateway": gw_rate,
            "gateway_received": gw_got,
            "n": n,
        },
        latency=[
            {
                "rate": r,
                "raw_p50": a[0],
                "raw_p99": a[1],
                "gw_p50": b[0],
                "gw_p99": b[1],
                "sent": b[2],
                "received": b[3],
            }
            for r, a, b in lat_rows
        ],
        ready_s=ready_s,
        idle_rss_mb=idle_rss,
        loaded_rss_mb=loaded_rss,
        bare_python_rss_mb=bare,
    )
    print(f"saved {save('relay', results)}")


async def broker_publish(port: int, topic: str, payload: bytes, *, retain: bool = True) -> None:
    args = ["mosquitto_pub", "-p", str(port), "-t", topic, "-s", "-q", "1"] + (["-r"] if retain else [])
    proc = await asyncio.create_subprocess_exec(*args, stdin=subprocess.PIPE)
    await proc.communicate(payload)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000, help="messages for the throughput runs")
    parser.add_argument("--seconds", type=float, default=4.0, help="duration of each latency run")
    parser.add_argument("--loads", default="500,2000,5000", help="offered loads, msg/s")
    a = parser.parse_args()
    asyncio.run(main(a.messages, a.seconds, [int(x) for x in a.loads.split(",")]))
