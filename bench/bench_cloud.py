"""Cloud link and fleet benchmark: uplink through the durable outbox, one signed region push to
a fleet of N simulated gateways, and memory per connection, each against a baseline measured in
the same run on the same TLS broker.

    python -m gateway.netns -- python bench/bench_cloud.py [--gateways 200] [--messages 20000]

Real parts: `cloud serve` as its own process (its Mosquitto with mutual TLS and per-gateway
ACLs, SQLite, uvicorn), `firmware-sim fleet --gateways N` as another (N real CloudAgents, each
with its own outbox and TLS connection), and this process measuring.

a) uplink: `--senders` provisioned gateways send `--messages` events between them.
   Baseline: the same envelopes published raw at QoS 1 (paho on the event loop, 200 in flight
   per connection, no outbox), timed to the last PUBACK and to the last end-to-end `ack` from
   the cloud. Then the real path: CloudAgent + Outbox (SQLite WAL, synchronous=FULL, group
   commit), timed to "accepted on disk" and to "stored by the cloud and acknowledged" (every
   outbox empty).
b) region push: `POST /v1/alerts` (CAP XML, `?region=21`, the province covering every fleet
   gateway) → time from the API's 201 to 50% / 99% / 100% of the gateways having their
   `received` receipt stored by the cloud. Watched on the broker: an observer with the cloud's
   own client certificate sees each receipt go up and the cloud's signed `ack` naming it (sent
   only after the cloud committed it); the API's coverage is checked at the end. Baseline: the
   same bytes (the signed alert as it went out) from `mosquitto_pub -l` to N plain TLS
   subscribers in this process, subscribed to the same region prefixes, without signing,
   verification, outboxes or receipts.
c) memory: broker and fleet resident size before and after the N gateways connect.

Prints a table and writes bench/results/cloud_<N>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import re
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import httpx
from _common import cpu_seconds, machine, rss_mb, save, show

from cloud_bridge.agent import CloudAgent
from cloud_bridge.examples import rainstorm_alert
from cloud_bridge.identity import Identity
from cloud_bridge.outbox import MessageClass, Outbox
from cloud_bridge.protocol import new_envelope, region_prefixes, topics
from firmware_sim.fleet import DEFAULT_REGIONS, ensure_identities, gateway_ids, raise_fd_limit
from gateway.broker import free_port
from gateway.mqtt import Message, MqttClient
from gateway.procs import Child

PROVINCE = "21"  # 辽宁省: covers every fleet gateway (DEFAULT_REGIONS)
SENDER_REGION = "110101"  # 北京市东城区: the uplink senders stay outside the pushes' target
WINDOW = 200  # QoS 1 publishes in flight per connection (the agent's own window)
DEVICES_PER_SENDER = 20  # concurrent producers per sending gateway (the outbox groups them)
CONNECT_BATCH = 50
_BEFORE = re.compile(r"rss ([\d.]+) MB before connecting")
_READY = re.compile(r"fleet ready: (\d+) gateways connected in ([\d.]+) s .*rss ([\d.]+) MB")
_PROVISIONED = re.compile(r"(\d+) gateways provisioned \((\d+) new.*\) in ([\d.]+) s")


# -- the cloud ------------------------------------------------------------------------------------


@dataclass
class CloudProc:
    child: Child
    data_dir: Path
    api_url: str
    host: str
    port: int
    operator_token: str
    installer_token: str

    @property
    def pid(self) -> int:
        assert self.child.pid is not None
        return self.child.pid

    def broker_pid(self) -> int:
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            for pid in (task / "children").read_text().split():
                if Path(f"/proc/{pid}/comm").read_text().strip() == "mosquitto":
                    return int(pid)
        raise RuntimeError("the cloud's broker is not running")

    def tls(self) -> ssl.SSLContext:
        """The cloud's own client identity (ACL: bfy/#), for observers and baseline clients."""
        ctx = ssl.create_default_context(cafile=str(self.data_dir / "ca" / "ca.pem"))
        ctx.load_cert_chain(
            str(self.data_dir / "tls" / "cloud-service.pem"), str(self.data_dir / "tls" / "cloud-service.key")
        )
        return ctx


async def start_cloud(tmp: Path) -> CloudProc:
    data = tmp / "cloud"
    http = f"127.0.0.1:{free_port()}"
    child = Child(
        "cloud",
        [sys.executable, "-m", "cloud_bridge.cli", "--data-dir", str(data), "serve", "--http", http],
        log_path=tmp / "cloud.log",
        ready=r"cloud ready: ",
    )
    await child.start(timeout_s=60)
    info = json.loads((data / "cloud.json").read_text())
    host, port = info["mqtt_url"].removeprefix("mqtts://").rsplit(":", 1)
    return CloudProc(
        child=child,
        data_dir=data,
        api_url=info["api_url"],
        host=host,
        port=int(port),
        operator_token=(data / "tokens" / "operator.token").read_text().strip(),
        installer_token=(data / "tokens" / "installer.token").read_text().strip(),
    )


# -- helpers -------------------------------------------------------------------------------------


async def until(check: Callable[[], bool], changed: asyncio.Event, timeout_s: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            while not check():
                changed.clear()
                await changed.wait()
    except TimeoutError:
        raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}") from None


async def connect_all(clients: list[MqttClient], tasks: list[asyncio.Task[None]]) -> None:
    """Start clients in batches (TLS handshakes run in the default executor)."""
    for start in range(0, len(clients), CONNECT_BATCH):
        chunk = clients[start : start + CONNECT_BATCH]
        tasks += [asyncio.create_task(c.run(), name=f"mqtt-{start + i}") for i, c in enumerate(chunk)]
        await asyncio.gather(*(c.wait_connected(60) for c in chunk))


async def close_all(clients: list[MqttClient], tasks: list[asyncio.Task[None]]) -> None:
    await asyncio.gather(*(c.close() for c in clients))
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def ms_points(arrivals: list[float], t0: float, n: int) -> tuple[float, float, float]:
    """Milliseconds after t0 until 50%, 99% and 100% of n have arrived (inf if some never did)."""
    got = sorted((t - t0) * 1000 for t in arrivals)

    def at(share: float) -> float:
        k = math.ceil(share * n)
        return got[k - 1] if k <= len(got) else math.inf

    return at(0.5), at(0.99), at(1.0)


def fmt3(points: tuple[float, float, float]) -> str:
    return " / ".join(f"{p:,.0f}" for p in points)


# -- a) uplink ----------------------------------------------------------------------------------


def event_payload(device: int, seq: int) -> dict[str, Any]:
    return {"device": f"d{device:02d}", "seq": seq, "kind": "motion", "motion": True, "room": "客厅"}


async def uplink_raw(cloud: CloudProc, ids: list[Identity], per_gateway: int) -> dict[str, float]:
    """The same envelopes straight to the broker at QoS 1: no outbox, no hello."""
    pending: set[str] = set()
    changed = asyncio.Event()
    clients: list[MqttClient] = []
    bodies: list[list[bytes]] = []
    for identity in ids:
        gw = identity.gateway_id
        client = MqttClient(
            host=cloud.host, port=cloud.port, client_id=gw, tls=identity.tls_context(), name=f"raw-{gw}"
        )

        def on_down(msg: Message) -> None:
            env = json.loads(msg.payload)
            if env.get("type") == "ack":
                pending.difference_update(env["payload"]["ids"])
                changed.set()

        client.subscribe(topics.down(gw), on_down, qos=1)
        clients.append(client)
        envs = [
            new_envelope("event", event_payload(i % DEVICES_PER_SENDER, i), gateway_id=gw)
            for i in range(per_gateway)
        ]
        pending.update(e.id for e in envs)
        bodies.append([e.to_bytes() for e in envs])
    tasks: list[asyncio.Task[None]] = []
    await connect_all(clients, tasks)
    total = len(pending)
    t0 = time.monotonic()
    futures: list[asyncio.Future[None]] = []

    async def send(client: MqttClient, gw: str, items: list[bytes]) -> None:
        window = asyncio.Semaphore(WINDOW)
        up = topics.up(gw)
        for body in items:
            await window.acquire()
            fut = client.publish_future(up, body)
            fut.add_done_callback(lambda _f: window.release())
            futures.append(fut)

    await asyncio.gather(*(send(c, i.gateway_id, b) for c, i, b in zip(clients, ids, bodies, strict=True)))
    await asyncio.gather(*futures)
    t_puback = time.monotonic()
    await until(lambda: not pending, changed, 120, "the cloud's acks for the raw uplinks")
    t_stored = time.monotonic()
    await close_all(clients, tasks)
    return {
        "messages": total,
        "puback_per_s": total / (t_puback - t0),
        "stored_per_s": total / (t_stored - t0),
    }


async def uplink_outbox(ids: list[Identity], per_gateway: int, state: Path) -> dict[str, float]:
    """The real path: CloudAgent + durable Outbox, until the cloud has acknowledged everything."""
    outboxes = [Outbox(state / i.gateway_id / "bench-outbox.sqlite3") for i in ids]
    for o in outboxes:
        await o.open()
    agents = [CloudAgent(i, o) for i, o in zip(ids, outboxes, strict=True)]
    tasks = [
        asyncio.create_task(a.run(), name=f"agent-{i.gateway_id}") for a, i in zip(agents, ids, strict=True)
    ]
    try:
        async with asyncio.timeout(60):
            await asyncio.gather(*(a.connected.wait() for a in agents))
        t0 = time.monotonic()

        async def device(agent: CloudAgent, d: int) -> None:
            for seq in range(d, per_gateway, DEVICES_PER_SENDER):
                await agent.send("event", event_payload(d, seq), MessageClass.EVENT)

        await asyncio.gather(*(device(a, d) for a in agents for d in range(DEVICES_PER_SENDER)))
        t_accepted = time.monotonic()
        async with asyncio.timeout(120):
            # A benchmark's poll (5 ms against seconds): the outbox has no "empty" event.
            while any(len(o) for o in outboxes):  # noqa: ASYNC110
                await asyncio.sleep(0.005)
        t_stored = time.monotonic()
        total = per_gateway * len(ids)
        transactions = sum(o.stats.transactions for o in outboxes)
        return {
            "messages": total,
            "accepted_per_s": total / (t_accepted - t0),
            "stored_per_s": total / (t_stored - t0),
            "transactions": transactions,
        }
    finally:
        await asyncio.gather(*(a.close() for a in agents))
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for o in outboxes:
            await o.close()


# -- b) region push --------------------------------------------------------------------------------


@dataclass
class Observer:
    """The cloud's view on the broker: receipts going up, the cloud's acks coming down,
    presence, and the signed alerts as they went out."""

    cloud: CloudProc
    receipt_ids: dict[str, tuple[str, str]] = field(default_factory=dict)  # envelope id → (alert, gw)
    stored: dict[str, dict[str, float]] = field(default_factory=dict)  # alert → gw → first stored
    at_broker: dict[str, dict[str, float]] = field(default_factory=dict)  # alert → gw → first seen
    offline: dict[str, float] = field(default_factory=dict)
    alert_bytes: bytes = b""
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.client = MqttClient(
            host=self.cloud.host,
            port=self.cloud.port,
            client_id="bench-observer",
            tls=self.cloud.tls(),
            name="observer",
        )
        self.client.subscribe("bfy/v1/gw/+/up", self._up, qos=1)
        self.client.subscribe("bfy/v1/gw/+/down", self._down, qos=1)
        self.client.subscribe("bfy/v1/gw/+/presence", self._presence, qos=1)
        self.client.subscribe(topics.region(PROVINCE, "alert"), self._alert, qos=1)

    def _up(self, msg: Message) -> None:
        if b'"type":"receipt"' not in msg.payload:
            return
        now = time.monotonic()
        env = json.loads(msg.payload)
        p = env["payload"]
        if p.get("stage") != "received":
            return
        alert, gw = p["alert_id"], env["gateway_id"]
        self.receipt_ids[env["id"]] = (alert, gw)
        self.at_broker.setdefault(alert, {}).setdefault(gw, now)

    def _down(self, msg: Message) -> None:
        if b'"type":"ack"' not in msg.payload:
            return
        now = time.monotonic()
        for ident in json.loads(msg.payload)["payload"]["ids"]:
            hit = self.receipt_ids.get(ident)
            if hit is not None:
                self.stored.setdefault(hit[0], {}).setdefault(hit[1], now)
                self.changed.set()

    def _presence(self, msg: Message) -> None:
        gw = msg.topic.split("/")[3]
        if msg.payload == b"offline" and not msg.retain:
            self.offline[gw] = time.monotonic()
            self.changed.set()

    def _alert(self, msg: Message) -> None:
        self.alert_bytes = msg.payload
        self.changed.set()


class FanOut:
    """Baseline: N plain TLS subscribers to the fleet's region prefixes, fed by mosquitto_pub."""

    def __init__(self, cloud: CloudProc, regions: list[str]) -> None:
        tls = cloud.tls()
        self.cloud = cloud
        self.arrivals: list[list[float]] = [[] for _ in regions]
        self.changed = asyncio.Event()
        self.clients = []
        for i, region in enumerate(regions):
            c = MqttClient(
                host=cloud.host, port=cloud.port, client_id=f"bench-sub-{i:05d}", tls=tls, name=f"sub-{i}"
            )
            for code in region_prefixes(region):
                c.subscribe(topics.region(code, "bench"), self._handler(i), qos=1)
            self.clients.append(c)
        self.tasks: list[asyncio.Task[None]] = []
        self.pub: asyncio.subprocess.Process | None = None

    def _handler(self, i: int) -> Callable[[Message], None]:
        def on(msg: Message) -> None:
            self.arrivals[i].append(time.monotonic())
            self.changed.set()

        return on

    async def start(self) -> None:
        await connect_all(self.clients, self.tasks)
        d = self.cloud.data_dir
        self.pub = await asyncio.create_subprocess_exec(
            "mosquitto_pub", "-h", self.cloud.host, "-p", str(self.cloud.port),
            "--cafile", str(d / "ca" / "ca.pem"), "--cert", str(d / "tls" / "cloud-service.pem"),
            "--key", str(d / "tls" / "cloud-service.key"), "-i", "bench-pub", "-q", "1",
            "-t", topics.region(PROVINCE, "bench"), "-l",
            stdin=subprocess.PIPE,
        )  # fmt: skip
        await self.push(b"warm-up")  # connected end to end before anything is timed

    async def push(self, payload: bytes) -> tuple[float, list[float]]:
        assert self.pub is not None and self.pub.stdin is not None
        k = len(self.arrivals[0]) + 1
        t0 = time.monotonic()
        self.pub.stdin.write(payload + b"\n")
        await self.pub.stdin.drain()
        await until(lambda: all(len(a) >= k for a in self.arrivals), self.changed, 60, "the baseline fan-out")
        return t0, [a[k - 1] for a in self.arrivals]

    async def stop(self) -> None:
        if self.pub is not None and self.pub.stdin is not None:
            self.pub.stdin.close()
            async with asyncio.timeout(10):
                await self.pub.wait()
        await close_all(self.clients, self.tasks)


async def push_alert(cloud: CloudProc, api: httpx.AsyncClient, observer: Observer, n: int) -> dict[str, Any]:
    body = rainstorm_alert("orange", PROVINCE)
    t_post = time.monotonic()
    resp = await api.post(
        "/v1/alerts",
        content=body,
        params={"region": PROVINCE},
        headers={"Content-Type": "application/cap+xml"},
    )
    t_201 = time.monotonic()
    if resp.status_code != 201:
        raise RuntimeError(f"POST /v1/alerts: {resp.status_code} {resp.text[:300]}")
    accepted = resp.json()
    alert_id = accepted["id"]
    await until(
        lambda: len(observer.stored.get(alert_id, {})) >= n,
        observer.changed,
        60 + n / 10,
        f"receipts of {alert_id}",
    )
    # The cloud's own view (coverage) must agree.
    async with asyncio.timeout(30):
        while True:
            status = (await api.get(f"/v1/alerts/{alert_id}")).json()
            if status["coverage"]["gateways_received"] >= n:
                break
            await asyncio.sleep(0.2)
    return {
        "alert_id": alert_id,
        "expected": accepted["gateways_expected"],
        "api_ms": (t_201 - t_post) * 1000,
        "stored_ms": ms_points(list(observer.stored[alert_id].values()), t_201, n),
        "at_broker_ms": ms_points(list(observer.at_broker[alert_id].values()), t_201, n),
        "coverage": status["coverage"],
    }


# -- the run -----------------------------------------------------------------------------------------


async def wait_log(path: Path, pattern: re.Pattern[str], timeout_s: float) -> re.Match[str]:
    async with asyncio.timeout(timeout_s):
        while True:
            with contextlib.suppress(OSError):
                found = pattern.search(await asyncio.to_thread(path.read_text, errors="replace"))
                if found:
                    return found
            await asyncio.sleep(0.02)  # a benchmark watching another process's log


def kb(delta_mb: float, n: int) -> float:
    return delta_mb * 1024 / n


async def main(a: argparse.Namespace) -> None:
    raise_fd_limit()
    info = machine()
    n = a.gateways
    results: dict[str, Any] = {"machine": info, "gateways": n}
    with tempfile.TemporaryDirectory(prefix="bench-cloud-") as tmp_name:
        tmp = Path(tmp_name)
        cloud = await start_cloud(tmp)
        api = httpx.AsyncClient(
            base_url=cloud.api_url,
            headers={"Authorization": f"Bearer {cloud.operator_token}"},
            timeout=60,
            trust_env=False,
        )
        fleet: Child | None = None
        try:
            # a) uplink
            senders, _ = await ensure_identities(
                cloud.api_url,
                cloud.installer_token,
                [(gw, SENDER_REGION) for gw in gateway_ids("bench-up", a.senders)],
                tmp / "senders",
            )
            per = a.messages // a.senders
            print(f"uplink: {per * a.senders} events from {a.senders} gateways …", flush=True)
            raw = await uplink_raw(cloud, senders, per)
            durable = await uplink_outbox(senders, per, tmp / "senders")
            results["uplink"] = {"raw": raw, "outbox": durable, "senders": a.senders}

            # c) memory, before
            observer = Observer(cloud)
            obs_task = asyncio.create_task(observer.client.run(), name="observer")
            await observer.client.wait_connected(30)
            fleet_log = tmp / "fleet.log"
            fleet = Child(
                "fleet",
                [
                    sys.executable, "-m", "firmware_sim.cli", "fleet", "--gateways", str(n),
                    "--cloud", cloud.api_url, f"--token={cloud.installer_token}",
                    "--state", str(tmp / "fleet"), "--telemetry-interval", str(a.telemetry_interval),
                ],
                log_path=fleet_log,
                ready=r"fleet ready: ",
            )  # fmt: skip
            print(f"fleet: provisioning and connecting {n} gateways …", flush=True)
            starting = asyncio.create_task(fleet.start(timeout_s=120 + n * 0.5))
            watching = asyncio.create_task(wait_log(fleet_log, _BEFORE, 120 + n * 0.5))
            await asyncio.wait({starting, watching}, return_when=asyncio.FIRST_COMPLETED)
            if not watching.done():
                watching.cancel()
                await starting  # raises: the fleet did not start
            before = await watching
            broker_before = rss_mb(cloud.broker_pid())
            fleet_before = float(before.group(1))
            await starting
            assert fleet.pid is not None
            text = fleet_log.read_text()
            ready = _READY.search(text)
            prov = _PROVISIONED.search(text)
            assert ready is not None and prov is not None
            await asyncio.sleep(2.0)  # settle before reading memory
            broker_after = rss_mb(cloud.broker_pid())
            fleet_after = rss_mb(fleet.pid)
            cpu0 = (cpu_seconds(fleet.pid), cpu_seconds(cloud.broker_pid()), cpu_seconds(cloud.pid))
            await asyncio.sleep(a.idle_seconds)
            cpu1 = (cpu_seconds(fleet.pid), cpu_seconds(cloud.broker_pid()), cpu_seconds(cloud.pid))
            idle = [(y - x) / a.idle_seconds for x, y in zip(cpu0, cpu1, strict=True)]
            results["memory"] = {
                "broker_before_mb": broker_before,
                "broker_after_mb": broker_after,
                "fleet_before_mb": fleet_before,
                "fleet_after_mb": fleet_after,
                "broker_kb_per_connection": kb(broker_after - broker_before, n),
                "fleet_kb_per_gateway": kb(fleet_after - fleet_before, n),
                "cloud_mb": rss_mb(cloud.pid),
            }
            results["fleet"] = {
                "provision_s": float(prov.group(3)),
                "connect_s": float(ready.group(2)),
                "idle_cpu_share": {"fleet": idle[0], "broker": idle[1], "cloud": idle[2]},
            }

            # b) region push, with its baseline
            regions = [DEFAULT_REGIONS[i % len(DEFAULT_REGIONS)] for i in range(n)]
            fan = FanOut(cloud, regions)
            print(f"region push: {a.pushes} alerts to {n} gateways, and the baseline …", flush=True)
            await fan.start()
            pushes = []
            baselines = []
            try:
                for _ in range(a.pushes):
                    pushes.append(await push_alert(cloud, api, observer, n))
                    t0, arrivals = await fan.push(observer.alert_bytes)
                    baselines.append(ms_points(arrivals, t0, n))
            finally:
                await fan.stop()
            results["push"] = {
                "alerts": pushes,
                "baseline_ms": baselines,
                "alert_bytes": len(observer.alert_bytes),
            }

            # the fleet stops: exit 0, every gateway offline in the cloud's view
            t_stop = time.monotonic()
            rc = await fleet.stop(timeout_s=60)
            stopped = time.monotonic()
            fleet_ids = set(gateway_ids("fleet", n))
            await until(
                lambda: fleet_ids <= {g for g, t in observer.offline.items() if t >= t_stop},
                observer.changed, 30, "every gateway offline",
            )  # fmt: skip
            offline_s = max(observer.offline[g] for g in fleet_ids) - t_stop
            online = (await api.get("/v1/gateways", params={"online": "true", "limit": 100_000})).json()
            still = [g["id"] for g in online if g["id"] in fleet_ids]
            results["stop"] = {
                "exit": rc,
                "stop_s": stopped - t_stop,
                "offline_s": offline_s,
                "still_online": len(still),
            }
            await observer.client.close()
            obs_task.cancel()
            await asyncio.gather(obs_task, return_exceptions=True)
        finally:
            if fleet is not None:
                await fleet.stop(timeout_s=60)
            await api.aclose()
            await cloud.child.stop(timeout_s=30)

    report(results, info)
    print(f"saved {save(f'cloud_{n}', results)}")


def report(r: dict[str, Any], info: dict[str, str]) -> None:
    n = r["gateways"]
    up_raw, up_box = r["uplink"]["raw"], r["uplink"]["outbox"]
    rows: list[list[Any]] = [
        [
            f"uplink, {up_raw['messages']:,} events from {r['uplink']['senders']} gateways: "
            "msg/s stored by the cloud",
            f"{up_raw['stored_per_s']:,.0f} (raw QoS 1; PUBACKs {up_raw['puback_per_s']:,.0f}/s)",
            f"{up_box['stored_per_s']:,.0f} (outbox; on disk {up_box['accepted_per_s']:,.0f}/s)",
            f"{up_box['stored_per_s'] / up_raw['stored_per_s']:.0%} of raw",
        ]
    ]
    pushes = r["push"]["alerts"]
    order = sorted(range(len(pushes)), key=lambda k: pushes[k]["stored_ms"][2])
    mid = order[len(order) // 2]
    for k, (alert, base) in enumerate(zip(pushes, r["push"]["baseline_ms"], strict=True)):
        rows.append(
            [
                f"region push {k + 1} to {n} gateways: ms to 50% / 99% / 100%"
                + (" (median)" if k == mid else ""),
                fmt3(tuple(base)),
                fmt3(tuple(alert["stored_ms"])) + f" (at broker {fmt3(tuple(alert['at_broker_ms']))})",
                f"API 201 in {alert['api_ms']:.0f} ms; "
                f"coverage {alert['coverage']['gateways_received']}/{alert['expected']}",
            ]
        )
    m = r["memory"]
    rows += [
        [
            f"broker RSS, {n} TLS connections (MB)",
            f"{m['broker_before_mb']:.1f} before",
            f"{m['broker_after_mb']:.1f} after",
            f"{m['broker_kb_per_connection']:.1f} KB per connection",
        ],
        [
            f"fleet process RSS, {n} gateways (MB)",
            f"{m['fleet_before_mb']:.1f} before",
            f"{m['fleet_after_mb']:.1f} after",
            f"{m['fleet_kb_per_gateway']:.0f} KB per gateway (agent, outbox, TLS link)",
        ],
    ]
    f = r["fleet"]
    idle = f["idle_cpu_share"]
    rows += [
        [
            f"provision {n} (work order + claim, one at a time)",
            "",
            f"{f['provision_s']:.1f} s",
            f"{n / f['provision_s']:.1f}/s",
        ],
        [
            f"connect {n} (TLS, subscribe, hello acked)",
            "",
            f"{f['connect_s']:.1f} s",
            f"{n / f['connect_s']:.0f}/s",
        ],
        [
            "idle CPU (share of one core)",
            f"broker {idle['broker']:.1%}",
            f"fleet {idle['fleet']:.1%}",
            f"cloud {idle['cloud']:.1%}; cloud RSS {m['cloud_mb']:.0f} MB",
        ],
        [
            "SIGTERM to the fleet",
            "",
            f"exit {r['stop']['exit']} in {r['stop']['stop_s']:.1f} s",
            f"all offline after {r['stop']['offline_s']:.1f} s; "
            f"{r['stop']['still_online']} still online in the API",
        ],
    ]
    show(
        f"Cloud link and fleet ({n} gateways)",
        ["measure", "baseline", "cloud link", "note"],
        rows,
        info,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--gateways", type=int, default=200, help="fleet size (default 200; documented: 1000)"
    )
    parser.add_argument("--messages", type=int, default=20_000, help="uplink events in all (default 20,000)")
    parser.add_argument(
        "--senders", type=int, default=4, help="gateways sending the uplink events (default 4)"
    )
    parser.add_argument("--pushes", type=int, default=3, help="alerts pushed to the fleet (default 3)")
    parser.add_argument("--telemetry-interval", type=float, default=30.0, help="fleet telemetry period (s)")
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="idle CPU measured over this long")
    asyncio.run(main(parser.parse_args()))
