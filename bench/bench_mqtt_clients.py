"""How to drive paho: receive rate of MQTT clients on one private Mosquitto, same run.

Baseline: `mosquitto_pub -l` → `mosquitto_sub` (C). Then Python clients receiving the same
stream: aiomqtt 2.x (async iterator), paho driven on the event loop the plain way, and
gateway.mqtt (paho on the event loop with the buffered socket). Also the publish side:
gateway.mqtt pipelining QoS 0 and QoS 1 into the broker, read back by `mosquitto_sub`.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import aiomqtt  # noqa: TID251 - measured here as the alternative
from _common import machine, save, show
from bench_relay import pipe_rate

from gateway import mqtt as gmqtt
from gateway.broker import PrivateBroker


async def _feed(port: int, n: int) -> None:
    data = b"".join(b'{"temperature": %d}\n' % i for i in range(n))
    proc = await asyncio.create_subprocess_exec(
        "mosquitto_pub", "-p", str(port), "-t", "load", "-l", stdin=subprocess.PIPE
    )
    await proc.communicate(data)


async def gateway_client(port: int, n: int, *, buffered: bool) -> float:
    c = gmqtt.MqttClient(
        host="127.0.0.1", port=port, client_id=f"b-{buffered}", name="bench", read_buffer=buffered
    )
    count = 0
    t0 = 0.0
    done = asyncio.Event()

    def on(msg: gmqtt.Message) -> None:
        nonlocal count, t0
        if count == 0:
            t0 = time.perf_counter()
        count += 1
        if count == n:
            done.set()

    c.subscribe("load", on)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(c.run())
        await c.wait_connected(5)
        await asyncio.sleep(0.2)  # SUBACK
        feeder = tg.create_task(_feed(port, n))
        async with asyncio.timeout(120):
            await done.wait()
        rate = (n - 1) / (time.perf_counter() - t0)
        await feeder
        await c.close()
        task.cancel()
    return rate


async def aiomqtt_client(port: int, n: int) -> float:
    async with aiomqtt.Client("127.0.0.1", port, identifier="b-aiomqtt", max_queued_incoming_messages=0) as c:
        await c.subscribe("load")
        await asyncio.sleep(0.2)
        feeder = asyncio.create_task(_feed(port, n))
        count = 0
        t0 = 0.0
        async for _msg in c.messages:
            if count == 0:
                t0 = time.perf_counter()
            count += 1
            if count == n:
                break
        await feeder
    return (n - 1) / (time.perf_counter() - t0)


async def publish_rate(port: int, n: int, qos: int) -> float:
    sub = await asyncio.create_subprocess_exec(
        "mosquitto_sub", "-p", str(port), "-t", "out", "-C", str(n), "-q", "1", stdout=subprocess.DEVNULL
    )
    await asyncio.sleep(0.3)  # let mosquitto_sub subscribe (it prints nothing we could wait on)
    c = gmqtt.MqttClient(host="127.0.0.1", port=port, client_id=f"pub-{qos}", name="pub")
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(c.run())
        await c.wait_connected(5)
        t0 = time.perf_counter()
        if qos == 0:
            for i in range(n):
                c.publish("out", b'{"temperature": %d}' % i)
        else:
            window: list[asyncio.Future[None]] = []
            for i in range(n):
                window.append(c.publish_future("out", b'{"temperature": %d}' % i))
                if len(window) >= 100:
                    await asyncio.gather(*window)
                    window.clear()
            await asyncio.gather(*window)
        async with asyncio.timeout(120):
            await sub.wait()
        rate = n / (time.perf_counter() - t0)
        await c.close()
        task.cancel()
    return rate


async def main(n: int) -> None:
    info = machine()
    with tempfile.TemporaryDirectory(prefix="bench-clients-") as tmp:
        async with PrivateBroker(workdir=Path(tmp) / "b") as broker:
            raw, _ = await pipe_rate(broker.port, "raw", "raw", n)
            rows = [
                ["mosquitto_pub → mosquitto_sub (baseline)", f"{raw:,.0f}", "100%"],
            ]
            for name, coro in (
                ("aiomqtt 2.x, async for message", aiomqtt_client(broker.port, n)),
                ("paho on the loop, plain", gateway_client(broker.port, n, buffered=False)),
                ("gateway.mqtt (paho, buffered reads)", gateway_client(broker.port, n, buffered=True)),
            ):
                rate = await coro
                rows.append([f"receive: {name}", f"{rate:,.0f}", f"{rate / raw:.0%}"])
            for qos in (0, 1):
                rate = await publish_rate(broker.port, n // 2, qos)
                rows.append(
                    [
                        f"publish QoS {qos}: gateway.mqtt" + (" (100 in flight)" if qos else ""),
                        f"{rate:,.0f}",
                        f"{rate / raw:.0%}",
                    ]
                )
    show("MQTT clients on one broker (messages/s)", ["client", "msg/s", "of baseline"], rows, info)
    save("mqtt_clients", {"machine": info, "rows": rows})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    asyncio.run(main(parser.parse_args().messages))
