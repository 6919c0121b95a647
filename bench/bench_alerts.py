"""Alert latency benchmark: the operator API accepts an alert → every TV shows it, every speaker
says it (runs in the private namespace: `python -m gateway.netns -- python bench/bench_alerts.py`).

The stand: the reference cloud (`cloud serve`, its own process, with its Mosquitto on mutual TLS),
one real `gateway run` provisioned with a work order as an installer would, and 10 TV + 10 speaker
simulators in this process on their own 127.0.0.x addresses, found by the gateway over mDNS. The
simulators stamp every command they apply on this process's monotonic clock (a subclass hook;
firmware_sim is unchanged), so every time below is taken on one clock.

Alerts go strictly one after another, never overlapping: send, wait until all 20 devices have it,
cancel it (the screens clear), pause `--gap-ms`, next. Every measurement thus starts from an idle
home with no alert active. Levels alternate: red (level 1: full screen, plus on/volume/mute on
every TV) and orange (level 2: banner). Three paths, interleaved round by round:

- product: `POST /v1/alerts` with CAP XML; t0 = the 201 response received (also kept: t0 = the
  request sent);
- transport: the same kind of alert as a signed envelope written to `mosquitto_pub -l` (one TLS
  connection with the cloud's client certificate) on the gateway's region topic of the cloud
  broker; t0 = the line written. This is what the cloud does once it has checked and targeted an
  alert, so the difference to the product is what the operator API adds;
- floor: the gateway's own command bodies POSTed straight to the simulators' `/api/v1/command`
  by an httpx client in a process of its own, as the gateway's is (one TV, also timed as a round
  trip; all TVs at once; all speakers at once; all of them at once); t0 = the request handed over.

Prints a table and writes bench/results/alerts.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import httpx
from _common import cpu_seconds, machine, percentile, rss_mb, save, show

from cloud_bridge.cap import Alert, Reference, parse_cap_xml, priority
from cloud_bridge.cloud.service import KeyRing
from cloud_bridge.examples import rainstorm_alert
from cloud_bridge.protocol import new_envelope, topics
from firmware_sim.terminal import SpeakerSimulator, TvSimulator
from gateway.broker import PrivateBroker
from gateway.netns import in_private_netns
from gateway.procs import Child

GW = "bench-gw"
REGION = "210102"
HOUSEHOLD = "H-BENCH-1"
AIM_MS = 1000.0  # the aim: every screen and speaker within a second
_TAG = re.compile(r"\[#(\w+)\]")
_JSON = {"Content-Type": "application/json"}
_CLOUD_CN = "cloud-service"  # the cloud's own client certificate (cloud_bridge.cloud.broker)

_SELF = str(Path(__file__).resolve())

now = time.monotonic


class BenchError(Exception):
    """The stand could not be brought up or stopped answering."""


# -- what the devices received -------------------------------------------------------------------


class Arrivals:
    """The first arrival of each alert at each device, on this process's monotonic clock.

    TVs are matched by the overlay's `alert_id`; speakers by the bench tag `[#...]` that the
    alert's headline carries into the spoken text (a `say` names no alert).
    """

    def __init__(self) -> None:
        self.tv: dict[str, dict[str, float]] = {}  # alert id → TV device id → t
        self.speaker: dict[str, dict[str, float]] = {}  # bench tag → speaker device id → t
        self.bodies: dict[str, bytes] = {}  # real command bodies from the gateway, for the floor
        self._changed = asyncio.Event()

    def on_tv(self, device_id: str, t: float, body: bytes) -> None:
        overlay = json.loads(body).get("overlay")
        if isinstance(overlay, dict) and overlay.get("kind") == "alert":
            self.tv.setdefault(str(overlay.get("alert_id")), {}).setdefault(device_id, t)
            self.bodies.setdefault(f"tv-{overlay.get('level')}", body)
        self._changed.set()

    def on_speaker(self, device_id: str, t: float, body: bytes) -> None:
        say = json.loads(body).get("say")
        if isinstance(say, dict):
            found = _TAG.search(str(say.get("text", "")))
            if found:
                self.speaker.setdefault(found.group(1), {}).setdefault(device_id, t)
                self.bodies.setdefault("speaker", body)
        self._changed.set()

    async def until(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Wait for `predicate` (checked at every command a device applies); False on timeout."""
        try:
            async with asyncio.timeout(timeout_s):
                while not predicate():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True


class TimedTv(TvSimulator):
    """A TV simulator that reports every command it applied (the firmware itself is unchanged)."""

    def __init__(self, arrivals: Arrivals, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._arrivals = arrivals

    def command(self, body: bytes) -> dict[str, Any]:
        state = super().command(body)
        self._arrivals.on_tv(self.device_id, now(), body)
        return state


class TimedSpeaker(SpeakerSimulator):
    def __init__(self, arrivals: Arrivals, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._arrivals = arrivals

    def command(self, body: bytes) -> dict[str, Any]:
        state = super().command(body)
        self._arrivals.on_speaker(self.device_id, now(), body)
        return state


# -- samples -------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One alert on one path: arrival offsets from t0 in ms (sorted), per device kind."""

    path: str
    level: int
    tv_ms: list[float]
    speaker_ms: list[float]
    sent_to_t0_ms: float = 0.0  # product only: request sent → 201 received
    cleared: bool = True

    def first_tv(self) -> float | None:
        return self.tv_ms[0] if self.tv_ms else None

    def all_tv(self, n: int) -> float | None:
        return self.tv_ms[-1] if len(self.tv_ms) >= n else None

    def all_speakers(self, n: int) -> float | None:
        return self.speaker_ms[-1] if len(self.speaker_ms) >= n else None

    def everything(self, n_tv: int, n_speakers: int) -> float | None:
        a, b = self.all_tv(n_tv), self.all_speakers(n_speakers)
        return None if a is None or b is None else max(a, b)


@dataclass
class FloorSample:
    level: int
    one_tv_rtt_ms: float  # the client's round trip
    one_tv_ms: float | None  # t0 → applied, like every other measure
    all_tv_ms: float | None
    all_speakers_ms: float | None
    everything_ms: float | None  # all TVs and speakers POSTed at once


@dataclass
class Stand:
    api: httpx.AsyncClient
    floor_client: FloorClient
    tvs: list[TimedTv]
    speakers: list[TimedSpeaker]
    arrivals: Arrivals
    raw: RawPublisher
    sign: Callable[[dict[str, Any]], bytes]
    timeout_s: float
    product: list[Sample] = field(default_factory=list)
    transport: list[Sample] = field(default_factory=list)
    floor: list[FloorSample] = field(default_factory=list)
    product_ids: list[str] = field(default_factory=list)
    missed: dict[str, int] = field(default_factory=lambda: {"product": 0, "transport": 0})
    not_cleared: int = 0

    def complete(self, alert_id: str, tag: str) -> bool:
        tvs = len(self.arrivals.tv.get(alert_id, ()))
        return tvs >= len(self.tvs) and len(self.arrivals.speaker.get(tag, ())) >= len(self.speakers)

    def screens_clear(self) -> bool:
        return all(tv.state["overlay"] is None for tv in self.tvs)

    def sample(self, path: str, level: int, alert_id: str, tag: str, t0: float) -> Sample:
        tv = sorted((t - t0) * 1000 for t in self.arrivals.tv.get(alert_id, {}).values())
        spk = sorted((t - t0) * 1000 for t in self.arrivals.speaker.get(tag, {}).values())
        return Sample(path, level, tv, spk)


# -- the three paths -------------------------------------------------------------------------------


def cap_alert(level: int, tag: str) -> bytes:
    """A fresh CAP rainstorm warning (new identifier, sent now), red for level 1, orange for 2.
    The tag goes into the Chinese headline, which every speaker then says."""
    xml = rainstorm_alert("red" if level == 1 else "orange", REGION).decode()
    tagged = xml.replace("预警信号</headline>", f"预警信号 [#{tag}]</headline>", 1)
    if tagged == xml:
        raise BenchError("the CAP example's headline changed; cannot tag it")
    return tagged.encode()


def cancel_of(alert: Alert) -> Alert:
    ref = Reference(sender=alert.sender, identifier=alert.identifier, sent=alert.sent)
    return alert.model_copy(
        update={"identifier": f"{alert.identifier}-cancel", "msg_type": "Cancel", "references": [ref]}
    )


def wire_payload(alert: Alert) -> dict[str, Any]:
    """What the cloud puts in an `alert` envelope (cloud_bridge/cloud/alerts.py, AlertDesk.submit)."""
    return {
        "alert": alert.model_dump(mode="json"),
        "alert_id": alert.alert_id,
        "priority": priority(alert),
        "targets": [REGION],
    }


async def via_api(st: Stand, level: int, tag: str) -> None:
    body = cap_alert(level, tag)
    sent = now()
    resp = await st.api.post("/v1/alerts", content=body, headers={"Content-Type": "application/cap+xml"})
    t0 = now()
    if resp.status_code != 201:
        raise BenchError(f"the operator API answered {resp.status_code}: {resp.text[:300]}")
    alert_id = str(resp.json()["id"])
    if not await st.arrivals.until(lambda: st.complete(alert_id, tag), st.timeout_s):
        st.missed["product"] += 1
    sample = st.sample("product", level, alert_id, tag, t0)
    sample.sent_to_t0_ms = (t0 - sent) * 1000
    st.product.append(sample)
    st.product_ids.append(alert_id)
    cancel = cancel_of(parse_cap_xml(body))
    resp = await st.api.post("/v1/alerts", content=cancel.model_dump_json().encode(), headers=_JSON)
    if resp.status_code != 201:
        raise BenchError(f"the operator API refused the cancel: {resp.status_code}: {resp.text[:300]}")
    sample.cleared = await st.arrivals.until(st.screens_clear, st.timeout_s)
    st.not_cleared += not sample.cleared


async def via_broker(st: Stand, level: int, tag: str) -> None:
    alert = parse_cap_xml(cap_alert(level, tag))
    line = st.sign(wire_payload(alert))
    t0 = await st.raw.send(line)
    if not await st.arrivals.until(lambda: st.complete(alert.alert_id, tag), st.timeout_s):
        st.missed["transport"] += 1
    sample = st.sample("transport", level, alert.alert_id, tag, t0)
    st.transport.append(sample)
    await st.raw.send(st.sign(wire_payload(cancel_of(alert))))
    sample.cleared = await st.arrivals.until(st.screens_clear, st.timeout_s)
    st.not_cleared += not sample.cleared


def _as_alert(body: bytes, alert_id: str) -> bytes:
    """A TV command body of the gateway's, carrying another alert id."""
    command = json.loads(body)
    command["overlay"]["alert_id"] = alert_id
    return json.dumps(command, ensure_ascii=False).encode()


def _as_tagged(body: bytes, tag: str) -> bytes:
    """A speaker command body of the gateway's, carrying another bench tag."""
    command = json.loads(body)
    command["say"]["text"] = _TAG.sub(f"[#{tag}]", command["say"]["text"])
    return json.dumps(command, ensure_ascii=False).encode()


async def floor(st: Stand, level: int, i: int) -> None:
    """The gateway's own command bodies, POSTed straight to the simulators by a client in its own
    process (as the gateway's is): one TV, all TVs at once, all speakers at once, all 20 at once."""
    tv_body, spk_body = st.arrivals.bodies[f"tv-{level}"], st.arrivals.bodies["speaker"]
    tv_urls = [f"{tv.base_url}/command" for tv in st.tvs]
    spk_urls = [f"{s.base_url}/command" for s in st.speakers]
    clear = [(url, b'{"overlay": null}') for url in tv_urls]

    def last(arrived: dict[str, float], n: int, t0: float) -> float | None:
        return (max(arrived.values()) - t0) * 1000 if len(arrived) >= n else None

    key = f"floor-{i}-one"
    t0, rtt_ms = await st.floor_client.post([(tv_urls[0], _as_alert(tv_body, key))])
    one = last(st.arrivals.tv.get(key, {}), 1, t0)
    await st.floor_client.post(clear[:1])
    key = f"floor-{i}-tvs"
    t0, _ = await st.floor_client.post([(url, _as_alert(tv_body, key)) for url in tv_urls])
    all_tv = last(st.arrivals.tv.get(key, {}), len(tv_urls), t0)
    await st.floor_client.post(clear)
    tag = f"FS{i:04d}"
    t0, _ = await st.floor_client.post([(url, _as_tagged(spk_body, tag)) for url in spk_urls])
    all_spk = last(st.arrivals.speaker.get(tag, {}), len(spk_urls), t0)
    key, tag = f"floor-{i}-all", f"FA{i:04d}"
    t0, _ = await st.floor_client.post(
        [(url, _as_alert(tv_body, key)) for url in tv_urls]
        + [(url, _as_tagged(spk_body, tag)) for url in spk_urls]
    )
    tvs, spks = (
        last(st.arrivals.tv.get(key, {}), len(tv_urls), t0),
        last(st.arrivals.speaker.get(tag, {}), len(spk_urls), t0),
    )
    everything = None if tvs is None or spks is None else max(tvs, spks)
    await st.floor_client.post(clear)
    st.floor.append(FloorSample(level, rtt_ms, one, all_tv, all_spk, everything))


class FloorClient:
    """The floor's HTTP client: this file run with `--floor-client`, a process of its own like the
    gateway, with an httpx client set up like the gateway's terminal adapter. One JSON line in
    (`[[url, body], ...]`, POSTed all at once), one line out when every answer is in."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, _SELF, "--floor-client",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip

    async def post(self, posts: list[tuple[str, bytes]]) -> tuple[float, float]:
        """(t0 = request handed over, the client's own round trip in ms)."""
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdout is None or proc.returncode is not None:
            raise BenchError("the floor client is not running")
        line = json.dumps([[url, body.decode()] for url, body in posts], ensure_ascii=False).encode()
        t0 = now()
        proc.stdin.write(line + b"\n")
        await proc.stdin.drain()
        async with asyncio.timeout(30):
            reply = json.loads(await proc.stdout.readline())
        if not reply["ok"]:
            raise BenchError(f"a simulator refused a floor command: {reply}")
        return t0, float(reply["ms"])

    async def close(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            async with asyncio.timeout(5):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def floor_client() -> None:
    """`--floor-client`: see FloorClient."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    async with httpx.AsyncClient(timeout=10, limits=limits, trust_env=False) as client:
        while line := await reader.readline():
            posts = json.loads(line)
            t = now()
            answers = await asyncio.gather(
                *(client.post(url, content=body.encode(), headers=_JSON) for url, body in posts)
            )
            ms = (now() - t) * 1000
            ok = all(a.status_code == 200 for a in answers)
            sys.stdout.write(json.dumps({"ok": ok, "ms": ms}) + "\n")
            sys.stdout.flush()


class RawPublisher:
    """`mosquitto_pub -l` on the cloud broker as the cloud's own MQTT identity: one TLS
    connection; each line written is one QoS 1 publish to the region's alert topic."""

    def __init__(self, cloud_dir: Path, mqtt_url: str) -> None:
        host_port = mqtt_url.removeprefix("mqtts://")
        host, _, port = host_port.rpartition(":")
        self._argv = [
            "mosquitto_pub", "-h", host, "-p", port, "-q", "1", "-l",
            "-t", topics.region(REGION, "alert"), "-i", "bench-raw-publisher",
            "--cafile", str(cloud_dir / "ca" / "ca.pem"),
            "--cert", str(cloud_dir / "tls" / f"{_CLOUD_CN}.pem"),
            "--key", str(cloud_dir / "tls" / f"{_CLOUD_CN}.key"),
        ]  # fmt: skip
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(*self._argv, stdin=subprocess.PIPE)

    async def send(self, line: bytes) -> float:
        """Write one message; returns when it was handed over (t0 of the transport path)."""
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            raise BenchError("mosquitto_pub is not running (TLS or ACL refused it?)")
        if b"\n" in line:
            raise BenchError("a line-mode message cannot contain a newline")
        t0 = now()
        proc.stdin.write(line + b"\n")
        await proc.stdin.drain()
        return t0

    async def close(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            async with asyncio.timeout(5):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


# -- the stand ---------------------------------------------------------------------------------------


async def _run_tool(argv: Sequence[str], what: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    try:
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise BenchError(f"{what} did not finish within 60 s") from None
    if proc.returncode != 0:
        raise BenchError(f"{what} failed: {err.decode(errors='replace')[-500:]}")
    return out.decode()


async def wait_home_ready(api: httpx.AsyncClient, tvs: list[TimedTv], speakers: list[TimedSpeaker]) -> float:
    """Until the cloud sees the gateway online with all 20 terminals shadowed and online, and the
    gateway follows every terminal's event stream. Polls (this is set-up, not a measurement)."""
    want = len(tvs) + len(speakers)
    t = now()
    async with asyncio.timeout(120):
        while True:
            gw = await api.get(f"/v1/gateways/{GW}")
            devices = await api.get(f"/v1/gateways/{GW}/devices")
            if gw.status_code == 200 and devices.status_code == 200:
                online = sum(1 for d in devices.json() if d.get("online"))
                following = all(s.listeners >= 1 for s in (*tvs, *speakers))
                if gw.json().get("online") and online >= want and following:
                    return now() - t
            await asyncio.sleep(0.25)


async def coverage(api: httpx.AsyncClient, ids: list[str], want: int, timeout_s: float) -> dict[str, Any]:
    """The cloud's receipt coverage of every product alert, once receipts stop arriving (or after
    `timeout_s`)."""
    latest: dict[str, dict[str, Any]] = {}
    pending = list(ids)
    t = now()
    while pending and now() - t < timeout_s:
        still = []
        for alert_id in pending:
            resp = await api.get(f"/v1/alerts/{alert_id}")
            resp.raise_for_status()
            cov = resp.json()["coverage"]
            latest[alert_id] = cov
            if not (cov["gateways_received"] == 1 and cov["devices_presented"] >= want):
                still.append(alert_id)
        pending = still
        if pending:
            await asyncio.sleep(0.5)
    covs = [latest[i] for i in ids if i in latest]
    return {
        "alerts": len(ids),
        "gateway_received": sum(1 for c in covs if c["gateways_received"] == 1),
        "fully_presented": sum(1 for c in covs if c["devices_presented"] >= want),
        "devices_known_min": min((c["devices_known"] for c in covs), default=0),
        "device_share_min": min((c["device_share"] or 0.0 for c in covs), default=0.0),
        "waited_s": round(now() - t, 2),
    }


def _sims(arrivals: Arrivals, n_tvs: int, n_speakers: int) -> tuple[list[TimedTv], list[TimedSpeaker]]:
    if n_tvs + n_speakers > 150:
        raise SystemExit("at most 150 simulators (addresses 127.0.0.101–250)")
    tvs = [
        TimedTv(arrivals, address=f"127.0.0.{101 + i}", device_id=f"tv-b{i:02d}", name=f"电视{i:02d}")
        for i in range(n_tvs)
    ]
    speakers = [
        TimedSpeaker(
            arrivals, address=f"127.0.0.{101 + n_tvs + i}", device_id=f"speaker-b{i:02d}", name=f"音箱{i:02d}"
        )
        for i in range(n_speakers)
    ]
    return tvs, speakers


async def main(args: argparse.Namespace) -> None:
    if not in_private_netns():
        raise SystemExit(
            "run inside the private namespace: python -m gateway.netns -- python bench/bench_alerts.py"
        )
    info = machine()
    started = now()
    arrivals = Arrivals()
    tvs, speakers = _sims(arrivals, args.tvs, args.speakers)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=False)
    keep = contextlib.nullcontext(str(args.workdir)) if args.workdir is not None else None
    with keep or tempfile.TemporaryDirectory(prefix="bench-alerts-") as tmp_name:
        tmp = Path(tmp_name)
        cloud_dir = tmp / "cloud"
        cloud = Child(
            "cloud",
            [sys.executable, "-m", "cloud_bridge.cli", "--data-dir", str(cloud_dir), "serve",
             "--http", "127.0.0.1:0"],
            log_path=tmp / "cloud.log",
            ready=r"cloud ready",
        )  # fmt: skip
        await cloud.start(timeout_s=60)
        gateway: Child | None = None
        raw: RawPublisher | None = None
        floor_http = FloorClient()
        try:
            urls = json.loads((cloud_dir / "cloud.json").read_text())
            token = (cloud_dir / "tokens" / "operator.token").read_text().strip()
            keys = await asyncio.to_thread(KeyRing.open, cloud_dir / "signing")
            signer = keys.current.signer
            async with (
                PrivateBroker(workdir=tmp / "broker") as broker,
                httpx.AsyncClient(
                    base_url=urls["api_url"], headers={"Authorization": f"Bearer {token}"},
                    timeout=30, trust_env=False,
                ) as api,
                asyncio.TaskGroup() as tg,
            ):  # fmt: skip
                sims = [tg.create_task(s.run(), name=f"sim-{s.device_id}") for s in (*tvs, *speakers)]
                try:
                    async with asyncio.timeout(60):
                        for s in (*tvs, *speakers):
                            await s.wait_ready()
                    resp = await api.post("/v1/workorders", json={"household": HOUSEHOLD, "region": REGION})
                    resp.raise_for_status()
                    state_dir = tmp / "gw" / "state"
                    await _run_tool(
                        [sys.executable, "-m", "gateway.cli", "provision", "--cloud", urls["api_url"],
                         "--code", resp.json()["code"], "--id", GW, "--state-dir", str(state_dir)],
                        "gateway provision",
                    )  # fmt: skip
                    profile = (
                        ["-m", "cProfile", "-o", str(args.profile_gateway)] if args.profile_gateway else []
                    )
                    gateway = Child(
                        "gateway",
                        [sys.executable, *profile, "-m", "gateway.cli", "run", "--mqtt", broker.url,
                         "--state-dir", str(state_dir), "--id", GW, "--http", "127.0.0.1:0"],
                        log_path=tmp / "gateway.log",
                        ready=r" ready: ",
                        env={**os.environ, "GATEWAY_DISCOVERY__MDNS": "true",
                             "GATEWAY_DISCOVERY__INTERFACES": "lo", "GATEWAY_DISCOVERY__COAP": "false",
                             # the installer approved the home's terminals on site
                             "GATEWAY_DISCOVERY__AUTO_APPROVE": "tasmota,zigbee2mqtt,terminal"},
                    )  # fmt: skip
                    await gateway.start(timeout_s=30)
                    ready_s = await wait_home_ready(api, tvs, speakers)
                    print(f"home ready {ready_s:.1f} s after the gateway started; measuring …", flush=True)
                    raw = RawPublisher(cloud_dir, urls["mqtt_url"])
                    await raw.start()
                    await floor_http.start()
                    st = Stand(
                        api=api, floor_client=floor_http, tvs=tvs, speakers=speakers, arrivals=arrivals,
                        raw=raw,
                        sign=lambda payload: signer.sign(new_envelope("alert", payload)).to_bytes(),
                        timeout_s=args.timeout_s,
                    )  # fmt: skip
                    results = await measure(st, args, gateway, cloud)
                    cov = await coverage(api, st.product_ids, len(tvs) + len(speakers), timeout_s=60)
                finally:
                    if raw is not None:
                        await raw.close()
                    await floor_http.close()
                    if gateway is not None:
                        await gateway.stop()
                    for task in sims:
                        task.cancel()
        finally:
            await cloud.stop(timeout_s=15)
    results |= {
        "machine": info,
        "coverage": cov,
        "home_ready_s": ready_s,
        "total_s": now() - started,
        "config": {
            "alerts": args.alerts, "tvs": args.tvs, "speakers": args.speakers, "warmup": args.warmup,
            "gap_ms": args.gap_ms, "timeout_s": args.timeout_s,
            "mode": "sequential: each alert is presented everywhere and cancelled before the next",
        },
    }  # fmt: skip
    report(results, st, info)


async def measure(st: Stand, args: argparse.Namespace, gateway: Child, cloud: Child) -> dict[str, Any]:
    """Warm-up, then `args.alerts` rounds of all three paths (order rotated round by round)."""
    gap_s = args.gap_ms / 1000
    if args.warmup < 2:
        raise SystemExit("--warmup must be at least 2 (the floor replays bodies of both levels)")
    for i in range(args.warmup):
        await via_api(st, 1 + i % 2, f"WA{i:03d}")
        await via_broker(st, 1 + i % 2, f"WR{i:03d}")
        await floor(st, 1 + i % 2, -1 - i)
        await asyncio.sleep(gap_s)
    st.floor.clear()
    st.product.clear()
    st.transport.clear()
    st.product_ids.clear()
    st.missed = {"product": 0, "transport": 0}
    st.not_cleared = 0
    assert gateway.pid is not None and cloud.pid is not None
    cpu = {"gateway": cpu_seconds(gateway.pid), "cloud": cpu_seconds(cloud.pid)}
    load_before = os.getloadavg()[0]
    t_start = now()
    deadline = t_start + args.max_s
    rounds = 0
    gateway_cpu = {"product": 0.0, "transport": 0.0, "floor": 0.0}  # s, by path (step + gap)
    for i in range(args.alerts):
        if now() > deadline:
            print(f"time budget of {args.max_s:g} s used up after {i} rounds", flush=True)
            break
        level = 1 + i % 2
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("product", partial(via_api, st, level, f"A{i:04d}")),
            ("transport", partial(via_broker, st, level, f"R{i:04d}")),
            ("floor", partial(floor, st, level, i)),
        ]
        k = (i // 2) % len(steps)  # each level meets each order
        for name, step in steps[k:] + steps[:k]:
            before = cpu_seconds(gateway.pid)
            await step()
            await asyncio.sleep(gap_s)  # what the step leaves behind (receipts) is done by now
            gateway_cpu[name] += cpu_seconds(gateway.pid) - before
        rounds += 1
        if (i + 1) % 50 == 0:
            print(f"  {i + 1} rounds", flush=True)
    elapsed = now() - t_start
    return {
        "rounds": rounds,
        "measure_s": elapsed,
        "cpu_s": {
            "gateway": cpu_seconds(gateway.pid) - cpu["gateway"],
            "cloud": cpu_seconds(cloud.pid) - cpu["cloud"],
            "gateway_by_path": gateway_cpu,
        },
        "rss_mb": {"gateway": rss_mb(gateway.pid), "cloud": rss_mb(cloud.pid)},
        # Others' work on the machine shows in the tails: the 1-minute load before and after.
        "load_1min": [load_before, os.getloadavg()[0]],
    }


# -- report -------------------------------------------------------------------------------------------


def _stats(values: Sequence[float | None]) -> dict[str, float | int]:
    got = [v for v in values if v is not None]
    return {
        "n": len(got),
        "missing": len(values) - len(got),
        "p50": percentile(got, 50),
        "p99": percentile(got, 99),
        "max": max(got) if got else float("nan"),
    }


def _cell(s: dict[str, float | int]) -> str:
    text = f"{s['p50']:.1f} / {s['p99']:.1f} / {s['max']:.1f}"
    return text + (f" ({s['missing']} missing)" if s["missing"] else "")


def report(results: dict[str, Any], st: Stand, info: dict[str, str]) -> None:
    n_tv, n_spk = len(st.tvs), len(st.speakers)

    def measures(samples: list[Sample]) -> dict[str, dict[str, float | int]]:
        out = {
            "first_tv": _stats([s.first_tv() for s in samples]),
            "all_tvs": _stats([s.all_tv(n_tv) for s in samples]),
            "all_speakers": _stats([s.all_speakers(n_spk) for s in samples]),
            "everything": _stats([s.everything(n_tv, n_spk) for s in samples]),
        }
        for level, name in ((1, "everything_fullscreen"), (2, "everything_banner")):
            out[name] = _stats([s.everything(n_tv, n_spk) for s in samples if s.level == level])
        return out

    prod, trans = measures(st.product), measures(st.transport)

    def gap(samples: list[Sample]) -> dict[str, float | int]:
        return _stats([s.speaker_ms[0] - s.tv_ms[-1] if s.tv_ms and s.speaker_ms else None for s in samples])

    prod_sent = _stats(
        [None if (e := s.everything(n_tv, n_spk)) is None else e + s.sent_to_t0_ms for s in st.product]
    )
    api_rtt = _stats([s.sent_to_t0_ms for s in st.product])
    fl = {
        "first_tv": _stats([f.one_tv_ms for f in st.floor]),
        "first_tv_round_trip": _stats([f.one_tv_rtt_ms for f in st.floor]),
        "all_tvs": _stats([f.all_tv_ms for f in st.floor]),
        "all_speakers": _stats([f.all_speakers_ms for f in st.floor]),
        "everything": _stats([f.everything_ms for f in st.floor]),
    }
    p99 = prod["everything"]["p99"]
    verdict = "met" if p99 < AIM_MS and not prod["everything"]["missing"] else "NOT met"
    rows: list[list[Any]] = [
        ["first TV", _cell(fl["first_tv"]), _cell(trans["first_tv"]), _cell(prod["first_tv"]),
         f"floor: one POST to one TV (round trip {_cell(fl['first_tv_round_trip'])})"],
        [f"all {n_tv} TVs", _cell(fl["all_tvs"]), _cell(trans["all_tvs"]), _cell(prod["all_tvs"]),
         f"floor: {n_tv} POSTs at once"],
        [f"all {n_spk} speakers", _cell(fl["all_speakers"]), _cell(trans["all_speakers"]),
         _cell(prod["all_speakers"]), f"floor: {n_spk} POSTs at once"],
        [f"every screen and speaker ({n_tv + n_spk})", _cell(fl["everything"]), _cell(trans["everything"]),
         _cell(prod["everything"]),
         f"floor: {n_tv + n_spk} POSTs at once; aim p99 < {AIM_MS:.0f} ms: {verdict}"],
        ["  … level 1, full screen", "", _cell(trans["everything_fullscreen"]),
         _cell(prod["everything_fullscreen"]), ""],
        ["  … level 2, banner", "", _cell(trans["everything_banner"]), _cell(prod["everything_banner"]), ""],
        ["last TV → first speaker", "", _cell(gap(st.transport)), _cell(gap(st.product)),
         "screens and speakers are commanded at the same time"],
        ["every screen and speaker, from POST sent", "", "", _cell(prod_sent), "t0 = request sent"],
        ["operator API: POST → 201", "", "", _cell(api_rtt), "sign, publish (PUBACK), store"],
    ]  # fmt: skip
    cov = results["coverage"]
    rows.append(
        ["cloud receipt coverage", "", "",
         f"{cov['fully_presented']}/{cov['alerts']} alerts all {n_tv + n_spk} devices; "
         f"gateway {cov['gateway_received']}/{cov['alerts']}",
         f"devices known ≥ {cov['devices_known_min']}, min share {cov['device_share_min']:.2f}"]
    )  # fmt: skip
    rows.append(
        ["alerts measured / missed (> timeout)", f"{len(st.floor)}",
         f"{len(st.transport)} / {st.missed['transport']}", f"{len(st.product)} / {st.missed['product']}",
         f"screens not cleared after cancel: {st.not_cleared}"]
    )  # fmt: skip
    cpu, rss = results["cpu_s"], results["rss_mb"]
    per = {k: v / max(1, results["rounds"]) * 1000 for k, v in cpu["gateway_by_path"].items()}
    rows.append(
        ["gateway CPU per alert and its cancel (ms)", f"{per['floor']:.1f} (following the floor's changes)",
         f"{per['transport']:.1f}", f"{per['product']:.1f}",
         f"gateway RSS {rss['gateway']:.0f} MB; cloud CPU {cpu['cloud']:.1f} s "
         f"in {results['measure_s']:.0f} s; load {results['load_1min'][0]:.1f} → "
         f"{results['load_1min'][1]:.1f}"]
    )  # fmt: skip
    show(
        f"Emergency alerts → {n_tv} TVs + {n_spk} speakers, latency ms (p50 / p99 / max)",
        ["measure", "floor: HTTP straight to the devices", "signed envelope on the cloud broker",
         "operator API (t0 = 201 received)", "note"],
        rows,
        info,
    )  # fmt: skip
    results |= {
        "floor": fl,
        "transport": trans,
        "product": prod,
        "product_from_post_sent": prod_sent,
        "api_post_to_201": api_rtt,
        "missed": st.missed,
        "not_cleared": st.not_cleared,
        "aim_ms": AIM_MS,
        "aim_p99_met": verdict == "met",
        "samples": {
            "product": [vars(s) for s in st.product],
            "transport": [vars(s) for s in st.transport],
            "floor": [vars(f) for f in st.floor],
        },
    }
    print(f"saved {save('alerts', results)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--alerts", type=int, default=200, help="alerts per path (default 200)")
    parser.add_argument("--tvs", type=int, default=10)
    parser.add_argument("--speakers", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=4, help="unmeasured rounds first (default 4)")
    parser.add_argument("--gap-ms", type=float, default=50.0, help="pause after each step (default 50)")
    parser.add_argument(
        "--timeout-s", type=float, default=5.0, help="an alert not everywhere by then counts as missed"
    )
    parser.add_argument(
        "--workdir", type=Path, help="a new directory to keep logs and state in (default: a temporary one)"
    )
    parser.add_argument("--max-s", type=float, default=180.0, help="time budget of the measured rounds")
    parser.add_argument(
        "--profile-gateway", type=Path, metavar="FILE", help="run the gateway under cProfile, stats to FILE"
    )
    parser.add_argument("--floor-client", action="store_true", help=argparse.SUPPRESS)
    cli = parser.parse_args()
    asyncio.run(floor_client() if cli.floor_client else main(cli))
