"""`firmware-sim fleet`: many simulated gateways on one cloud, each with the real cloud link.

    firmware-sim fleet --gateways N --cloud URL --token=TOKEN [--region CODE ...] [--state DIR]
                       [--duration S] [--telemetry-interval S] [--id-prefix P] [--connect-batch B]

Every simulated gateway is what `gateway provision` and `gateway run` make of a box, minus the
home's LAN: an identity claimed through the operator API with a work order and a CSR
(gateway/provision.py, unchanged), its own durable outbox (SQLite, WAL, `synchronous=FULL`) and
its own `CloudAgent` on its own mutual-TLS MQTT connection. Downlinks are verified by the agent
as on a real box (signature, freshness, replay); a verified alert is checked the way the
gateway's AlertService checks it (data dictionary, region, time, duplicates) and answered with a
`received` receipt, without presenting anything. A small simulated home (a plug and a climate
sensor) sends telemetry, so the cloud keeps a shadow of every gateway.

All gateways run in one asyncio process, which needs care with per-process limits:
- file descriptors: an outbox holds three (database, WAL, shared memory) and the link one, so
  RLIMIT_NOFILE's soft limit is raised to the hard limit at start;
- threads: each outbox has its one writer thread; TLS handshakes run in the loop's default
  executor (a handful of threads), so gateways connect in bounded batches, each batch waiting
  until its links are confirmed (the cloud acknowledged the `hello`) before the next starts.

Identities already in `--state` from an earlier run against the same cloud are reused. Logs a
progress line while provisioning and connecting, then `fleet ready: N gateways connected`;
SIGTERM/SIGINT (or the end of `--duration`) says goodbye on every link (presence `offline`) and
exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import random
import re
import resource
import tempfile
import time
import zlib
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from cloud_bridge.agent import CloudAgent
from cloud_bridge.cap import Alert, alert_problems, expires_utc, priority, sent_utc
from cloud_bridge.identity import Identity, NotProvisioned
from cloud_bridge.outbox import MessageClass, Outbox, OutboxFull
from cloud_bridge.protocol import BridgeError, Envelope, region_prefixes
from firmware_sim._mqtt import FirmwareSimError
from gateway.provision import ProvisionError, factory_reset, provision

__all__ = [
    "DEFAULT_REGIONS",
    "Fleet",
    "FleetError",
    "FleetSettings",
    "SimulatedGateway",
    "add_fleet_parser",
    "ensure_identities",
    "fleet_work",
    "gateway_ids",
    "raise_fd_limit",
    "rss_mb",
]

_log = logging.getLogger(__name__)

#: County-level codes (行政区划代码) across Liaoning's 14 cities; Shenyang and Dalian, the two
#: large ones, have more districts here, so round-robin gives them most of the boxes.
DEFAULT_REGIONS: tuple[str, ...] = (
    # 沈阳市: 和平 沈河 大东 皇姑 铁西 苏家屯 浑南 沈北新区 于洪
    "210102", "210103", "210104", "210105", "210106", "210111", "210112", "210113", "210114",
    # 大连市: 中山 西岗 沙河口 甘井子 旅顺口 金州
    "210202", "210203", "210204", "210211", "210212", "210213",
    # 鞍山 铁东/铁西/千山, 抚顺 新抚/东洲, 本溪 平山, 丹东 元宝/振兴, 锦州 古塔, 营口 站前
    "210302", "210303", "210311", "210402", "210403", "210502", "210602", "210603", "210702", "210802",
    # 阜新 海州, 辽阳 白塔, 盘锦 双台子, 铁岭 银州, 朝阳 双塔, 葫芦岛 连山
    "210902", "211002", "211102", "211202", "211302", "211402",
)  # fmt: skip
DEFAULT_TELEMETRY_INTERVAL_S = 30.0
DEFAULT_CONNECT_BATCH = 50
DEFAULT_ID_PREFIX = "fleet"
# One claim at a time: the reference cloud rewrites its broker's ACL and reloads it (SIGHUP)
# after every claim, one at a time, so concurrent claims only queue there; and a SIGHUP that
# arrives while Mosquitto is still reloading for the previous claim is lost, which stalls that
# claim for the cloud's 5 s reload timeout and can leave the newest gateway out of the ACL.
PROVISION_CONCURRENCY = 1
OUTBOX_OPEN_BATCH = 50
OUTBOX_FILE = "outbox.sqlite3"  # the name `gateway run` uses (gateway.daemon.OUTBOX_FILE)
BATCH_CONFIRM_TIMEOUT_S = 30.0  # a batch that is not confirmed by then: go on, it keeps retrying
PROGRESS_INTERVAL_S = 2.0
CLOSE_CONCURRENCY = 200
WORKORDER_TTL_S = 3600.0
HTTP_TIMEOUT_S = 30.0
ALERT_DEFAULT_LIFETIME = timedelta(hours=6)  # AlertPolicy.default_expiry on a real box
ALERT_FUTURE_SKEW = timedelta(minutes=5)
_FDS_PER_GATEWAY = 5  # outbox database, WAL and shared memory, the TLS socket, one spare
_ID_PREFIX = re.compile(r"^[a-z0-9][a-z0-9_-]{0,40}$")  # + "-NNNNN" stays a valid gateway id

Work = Callable[[], Coroutine[Any, Any, None]]


class FleetError(FirmwareSimError):
    """The fleet cannot be set up (provisioning refused, cloud unreachable, bad arguments)."""


def rss_mb() -> float:
    """This process's resident set size (VmRSS) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def gateway_ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i:05d}" for i in range(n)]


class _Progress:
    """A progress line at most every PROGRESS_INTERVAL_S (and always the last one)."""

    def __init__(self, what: str, total: int) -> None:
        self._what = what
        self._total = total
        self._last = 0.0

    def __call__(self, done: int, extra: str = "", *, force: bool = False) -> None:
        now = time.monotonic()
        if force or done >= self._total or now - self._last >= PROGRESS_INTERVAL_S:
            self._last = now
            _log.info("fleet: %s %d/%d%s", self._what, done, self._total, f" ({extra})" if extra else "")


# -- provisioning ---------------------------------------------------------------------------------


def _same_cloud(identity: Identity, cloud_url: str) -> bool:
    return identity.record.api_url.rstrip("/") == cloud_url.rstrip("/")


def _load_existing(state_dir: Path, ids: Sequence[str], cloud_url: str) -> dict[str, Identity]:
    """Blocking: identities in `state_dir/<id>/` that this cloud issued."""
    found: dict[str, Identity] = {}
    foreign = 0
    for gateway_id in ids:
        try:
            identity = Identity.load(state_dir / gateway_id)
        except NotProvisioned:
            continue
        except BridgeError as exc:
            _log.warning("fleet: %s: %s; provisioning it again", gateway_id, exc)
            continue
        if identity.gateway_id == gateway_id and _same_cloud(identity, cloud_url):
            found[gateway_id] = identity
        else:
            foreign += 1
    if foreign:
        _log.warning(
            "fleet: %d identities in %s belong to another cloud; provisioning them again", foreign, state_dir
        )
    return found


async def _workorder(client: httpx.AsyncClient, household: str, region: str) -> str:
    try:
        response = await client.post(
            "/v1/workorders", json={"household": household, "region": region, "ttl_s": WORKORDER_TTL_S}
        )
    except httpx.HTTPError as exc:
        raise FleetError(f"cannot reach the cloud's API at {client.base_url}: {exc}") from exc
    if response.status_code in (401, 403):
        raise FleetError("the cloud refused the token for work orders (give an installer or operator token)")
    if response.status_code != 201:
        raise FleetError(f"work order refused ({response.status_code}): {response.text[:300]}")
    return str(response.json()["code"])


async def ensure_identities(
    cloud_url: str,
    token: str | None,
    wanted: Sequence[tuple[str, str]],
    state_dir: Path,
    *,
    concurrency: int = PROVISION_CONCURRENCY,
) -> tuple[list[Identity], int]:
    """One identity per (gateway id, region), in `state_dir/<gateway id>/`: reused when this
    cloud issued it before, otherwise claimed with a new work order exactly as `gateway
    provision` does. Returns the identities (in `wanted` order) and how many were new."""
    ids = [gw for gw, _ in wanted]
    existing = await asyncio.to_thread(_load_existing, state_dir, ids, cloud_url)
    missing = [(gw, region) for gw, region in wanted if gw not in existing]
    if missing and not token:
        raise FleetError(f"{len(missing)} gateways need provisioning: give --token (installer or operator)")
    progress = _Progress("provisioned", len(missing))
    done = 0
    gate = asyncio.Semaphore(concurrency)

    async with httpx.AsyncClient(
        base_url=cloud_url.rstrip("/"),
        headers={"Authorization": f"Bearer {token}"},
        timeout=HTTP_TIMEOUT_S,
        trust_env=False,
    ) as client:

        async def one(gateway_id: str, region: str) -> None:
            nonlocal done
            async with gate:
                code = await _workorder(client, f"home-{gateway_id}", region)
                box = state_dir / gateway_id
                await asyncio.to_thread(factory_reset, box)  # an outbox for another cloud goes too
                box.mkdir(parents=True, exist_ok=True, mode=0o750)
                try:
                    result = await asyncio.to_thread(
                        provision, box, cloud_url=cloud_url, code=code, gateway_id=gateway_id
                    )
                except ProvisionError as exc:
                    raise FleetError(f"{gateway_id}: {exc}") from exc
                existing[gateway_id] = result.identity
            done += 1
            progress(done)

        try:
            async with asyncio.TaskGroup() as tg:
                for gateway_id, region in missing:
                    tg.create_task(one(gateway_id, region), name=f"provision-{gateway_id}")
        except* FleetError as group:
            first = group.exceptions[0]
            raise FleetError(str(first)) from first
    return [existing[gw] for gw in ids], len(missing)


# -- one simulated gateway ------------------------------------------------------------------------


@dataclass(slots=True)
class GatewayStats:
    alerts: int = 0
    receipts: int = 0
    rejected: int = 0
    telemetry: int = 0


@dataclass(slots=True)
class _Home:
    """A plug with an energy meter and a climate sensor, as the box would report them."""

    gateway_id: str
    rng: random.Random
    power_w: float = 60.0
    energy_kwh: float = 0.0
    temperature_c: float = 21.0
    humidity: float = 40.0
    plug_id: str = field(init=False)
    sensor_id: str = field(init=False)

    def __post_init__(self) -> None:
        tag = zlib.crc32(self.gateway_id.encode())
        self.plug_id = f"tasmota-a4cf12{tag & 0xFFFFFF:06x}"
        self.sensor_id = f"coap-sensor-{tag:08x}"
        self.temperature_c = round(self.rng.uniform(18.0, 24.0), 1)
        self.humidity = round(self.rng.uniform(30.0, 55.0), 1)

    def snapshot(self) -> dict[str, Any]:
        plug = {
            "id": self.plug_id, "name": "客厅插座", "kind": "plug", "room": "客厅", "protocol": "tasmota",
            "model": "Sonoff S31", "manufacturer": "Sonoff", "address": "",
            "capabilities": ["on", "power", "energy"], "settable": ["on"], "controllable": True, "ranges": {},
        }  # fmt: skip
        sensor = {
            "id": self.sensor_id, "name": "卧室温湿度", "kind": "sensor", "room": "卧室", "protocol": "coap",
            "model": "IPSO 3303/3304", "manufacturer": "Beifang", "address": "",
            "capabilities": ["temperature", "humidity"], "settable": [], "controllable": False, "ranges": {},
        }  # fmt: skip
        devices = {
            self.plug_id: {"info": plug, "state": self._plug_state(), "online": True},
            self.sensor_id: {"info": sensor, "state": self._sensor_state(), "online": True},
        }
        return {"devices": devices}

    def step(self, interval_s: float) -> dict[str, Any]:
        self.power_w = max(0.0, self.power_w + self.rng.uniform(-5.0, 5.0))
        self.energy_kwh += self.power_w * interval_s / 3_600_000
        self.temperature_c = min(30.0, max(12.0, self.temperature_c + self.rng.uniform(-0.2, 0.2)))
        self.humidity = min(90.0, max(15.0, self.humidity + self.rng.uniform(-0.5, 0.5)))
        return {
            "devices": {
                self.plug_id: {"state": self._plug_state()},
                self.sensor_id: {"state": self._sensor_state()},
            }
        }

    def _plug_state(self) -> dict[str, Any]:
        return {
            "on": True,
            "power": round(self.power_w, 1),
            "energy": round(self.energy_kwh, 4),
            "ts": _now(),
        }

    def _sensor_state(self) -> dict[str, Any]:
        return {
            "temperature": round(self.temperature_c, 1),
            "humidity": round(self.humidity, 1),
            "ts": _now(),
        }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class SimulatedGateway:
    """One box: its identity, its outbox, its CloudAgent, receipts for alerts, telemetry."""

    def __init__(
        self,
        identity: Identity,
        outbox: Outbox,
        *,
        telemetry_interval_s: float = DEFAULT_TELEMETRY_INTERVAL_S,
        rng: random.Random | None = None,
        reconnect_max_s: float = 30.0,
    ) -> None:
        self.identity = identity
        self.agent = CloudAgent(identity, outbox, reconnect_max_s=reconnect_max_s)
        self.agent.on("alert", self._on_alert)
        self._telemetry_interval_s = telemetry_interval_s
        self._rng = rng or random.Random()
        self._alerts_seen: set[str] = set()
        self.stats = GatewayStats()

    @property
    def id(self) -> str:
        return self.identity.gateway_id

    @property
    def region(self) -> str:
        return self.identity.region

    @property
    def connected(self) -> bool:
        """The link is up and the cloud has acknowledged this connection's hello."""
        return self.agent.connected.is_set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.agent.run(), name=f"{self.id}-agent")
            tg.create_task(self._telemetry(), name=f"{self.id}-telemetry")

    async def close(self) -> None:
        """Presence `offline`, then a clean disconnect (idempotent)."""
        await self.agent.close()

    # -- alerts: AlertService.on_cloud_alert's checks, receipts only ---------------------------

    async def _on_alert(self, envelope: Envelope, topic: str) -> None:
        self.stats.alerts += 1
        payload = envelope.payload
        try:
            model = Alert.model_validate(payload.get("alert"))
        except ValidationError as exc:
            await self._reject(
                "invalid_alert", str(payload.get("alert_id", "")), f"{exc.error_count()} errors"
            )
            return
        problems = alert_problems(model)
        if problems:
            await self._reject("invalid_alert", model.alert_id, "; ".join(problems)[:300])
            return
        targets = [str(t) for t in payload.get("targets") or ["all"]]
        if "all" not in targets and not set(targets) & set(region_prefixes(self.region)):
            await self._reject("out_of_region", model.alert_id, ",".join(targets)[:200])
            return
        now = datetime.now(UTC)
        alert_id, level = model.alert_id, priority(model)
        if sent_utc(model) > now + ALERT_FUTURE_SKEW:
            await self._reject("future", alert_id, model.sent)
            return
        if model.msg_type == "Cancel":
            await self._receipt(alert_id, "received", level=level, result="verified")
            return
        if model.msg_type not in ("Alert", "Update"):
            return
        stamps = [t for t in (expires_utc(i) for i in model.infos) if t is not None]
        if (min(stamps) if stamps else sent_utc(model) + ALERT_DEFAULT_LIFETIME) <= now:
            await self._reject("expired", alert_id, model.sent)
            return
        if alert_id in self._alerts_seen:
            # The cloud resends what it has no receipt for; the receipt may have been lost.
            await self._receipt(alert_id, "received", level=level, result="duplicate")
            return
        if model.status in ("System", "Draft"):
            await self._receipt(alert_id, "suppressed", level=level, reason=model.status.lower())
            return
        self._alerts_seen.add(alert_id)
        await self._receipt(alert_id, "received", level=level, result="verified")

    async def _receipt(self, alert_id: str, stage: str, **extra: Any) -> None:
        payload = {"alert_id": alert_id, "stage": stage, "ts": _now(), **extra}
        try:
            await self.agent.send("receipt", payload, MessageClass.CRITICAL)
        except OutboxFull:
            _log.error("%s: outbox full; receipt %s/%s not kept", self.id, alert_id, stage)
            return
        self.stats.receipts += 1

    async def _reject(self, reason: str, alert_id: str, detail: str) -> None:
        self.stats.rejected += 1
        _log.warning("%s: alert %s not accepted: %s (%s)", self.id, alert_id, reason, detail[:200])
        report = {"reason": reason, "type": "alert", "id": alert_id, "detail": detail}
        try:
            await self.agent.send("security", report, MessageClass.CRITICAL)
        except OutboxFull:
            _log.error("%s: outbox full; security event not kept", self.id)

    # -- telemetry --------------------------------------------------------------------------

    async def _telemetry(self) -> None:
        """A full snapshot at start, then state changes every interval (jittered phase, so
        a thousand boxes started together do not report in step)."""
        home = _Home(self.id, self._rng)
        await self._send_telemetry(home.snapshot())
        await asyncio.sleep(self._rng.uniform(0, self._telemetry_interval_s))
        while True:
            await self._send_telemetry(home.step(self._telemetry_interval_s))
            await asyncio.sleep(self._telemetry_interval_s)

    async def _send_telemetry(self, payload: dict[str, Any]) -> None:
        await self.agent.send("telemetry", payload, MessageClass.TELEMETRY)
        self.stats.telemetry += 1


# -- the fleet ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FleetSettings:
    gateways: int
    cloud_url: str
    token: str | None = None
    regions: tuple[str, ...] = DEFAULT_REGIONS
    state_dir: Path | None = None  # None: a temporary directory, removed at exit
    duration_s: float | None = None  # None: until cancelled (SIGTERM/SIGINT)
    telemetry_interval_s: float = DEFAULT_TELEMETRY_INTERVAL_S
    id_prefix: str = DEFAULT_ID_PREFIX
    connect_batch: int = DEFAULT_CONNECT_BATCH
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.gateways < 1:
            raise ValueError("--gateways must be at least 1")
        if not self.regions:
            raise ValueError("give at least one --region")
        for code in self.regions:
            region_prefixes(code)  # ValueError naming the bad code
        if not _ID_PREFIX.fullmatch(self.id_prefix):
            raise ValueError(f"--id-prefix {self.id_prefix!r}: lowercase letters, digits, - and _ (≤ 41)")
        if self.connect_batch < 1:
            raise ValueError("--connect-batch must be at least 1")
        if not self.cloud_url.startswith(("http://", "https://")):
            raise ValueError(
                f"--cloud must be the cloud's API URL, http(s)://HOST:PORT (got {self.cloud_url!r})"
            )

    def assignment(self) -> list[tuple[str, str]]:
        """(gateway id, region) for every gateway: regions in turn."""
        ids = gateway_ids(self.id_prefix, self.gateways)
        return [(gw, self.regions[i % len(self.regions)]) for i, gw in enumerate(ids)]


class Fleet:
    """`await Fleet(settings).run()`: provision, connect in batches, serve until cancelled
    (or `duration_s`), then close every link cleanly."""

    def __init__(self, settings: FleetSettings) -> None:
        self.settings = settings
        self.gateways: list[SimulatedGateway] = []
        self.ready = asyncio.Event()
        self._rng = random.Random(settings.seed)

    async def run(self) -> None:
        s = self.settings
        limit = raise_fd_limit()
        if limit < _FDS_PER_GATEWAY * s.gateways + 100:
            _log.warning(
                "fleet: %d file descriptors allowed; %d gateways need about %d",
                limit, s.gateways, _FDS_PER_GATEWAY * s.gateways + 100,
            )  # fmt: skip
        with contextlib.ExitStack() as cleanup:
            state_dir = s.state_dir
            if state_dir is None:
                state_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="bfy-fleet-")))
            state_dir.mkdir(parents=True, exist_ok=True)
            timeout = asyncio.timeout(s.duration_s)
            try:
                async with timeout:
                    await self._run(state_dir)
            except TimeoutError:
                if not timeout.expired():
                    raise
                _log.info("fleet: --duration of %g s is over", s.duration_s)

    async def _run(self, state_dir: Path) -> None:
        s = self.settings
        started = time.monotonic()
        _log.info(
            "fleet: %d gateways against %s, %d regions, state in %s",
            s.gateways,
            s.cloud_url,
            len(s.regions),
            state_dir,
        )
        identities, new = await ensure_identities(s.cloud_url, s.token, s.assignment(), state_dir)
        _log.info(
            "fleet: %d gateways provisioned (%d new, %d reused) in %.1f s; rss %.1f MB before connecting",
            len(identities), new, len(identities) - new, time.monotonic() - started, rss_mb(),
        )  # fmt: skip
        outboxes: list[Outbox] = []
        try:
            for start in range(0, len(identities), OUTBOX_OPEN_BATCH):
                chunk = [
                    Outbox(i.directory.parent / OUTBOX_FILE)
                    for i in identities[start : start + OUTBOX_OPEN_BATCH]
                ]
                opened = await asyncio.gather(*(o.open() for o in chunk), return_exceptions=True)
                outboxes += [o for o, r in zip(chunk, opened, strict=True) if r is None]
                failed = [r for r in opened if isinstance(r, BaseException)]
                if failed:
                    raise FleetError(f"cannot open an outbox: {failed[0]}") from failed[0]
            self.gateways = [
                SimulatedGateway(
                    identity,
                    outbox,
                    telemetry_interval_s=s.telemetry_interval_s,
                    rng=random.Random(self._rng.getrandbits(64)),
                )
                for identity, outbox in zip(identities, outboxes, strict=True)
            ]
            await self._serve()
        finally:
            for start in range(0, len(outboxes), OUTBOX_OPEN_BATCH):
                await asyncio.gather(*(o.close() for o in outboxes[start : start + OUTBOX_OPEN_BATCH]))

    async def _serve(self) -> None:
        tasks: list[asyncio.Task[None]] = []
        async with asyncio.TaskGroup() as tg:
            try:
                await self._connect(tg, tasks)
                await asyncio.Event().wait()  # until cancelled (signal) or the duration is over
            finally:
                await self._close_all()
                for task in tasks:
                    task.cancel()

    async def _connect(self, tg: asyncio.TaskGroup, tasks: list[asyncio.Task[None]]) -> None:
        """Start the gateways in batches; each batch waits for its links to be confirmed."""
        started = time.monotonic()
        batch = self.settings.connect_batch
        total = len(self.gateways)
        progress = _Progress("connected", total)
        for start in range(0, total, batch):
            chunk = self.gateways[start : start + batch]
            tasks += [tg.create_task(g.run(), name=f"gw-{g.id}") for g in chunk]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(BATCH_CONFIRM_TIMEOUT_S):
                    await asyncio.gather(*(g.agent.connected.wait() for g in chunk))
            progress(self.connected_count(), f"{len(tasks)} started")
        while missing := [g for g in self.gateways if not g.connected]:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PROGRESS_INTERVAL_S):
                    await asyncio.gather(*(g.agent.connected.wait() for g in missing))
            progress(
                self.connected_count(), f"waiting for {', '.join(g.id for g in missing[:3])}…", force=True
            )
        self.ready.set()
        _log.info(
            "fleet ready: %d gateways connected in %.1f s (%d regions, rss %.1f MB)",
            total, time.monotonic() - started, len({g.region for g in self.gateways}), rss_mb(),
        )  # fmt: skip

    def connected_count(self) -> int:
        return sum(g.connected for g in self.gateways)

    async def _close_all(self) -> None:
        """Goodbye on every link, a bounded number at a time."""
        gate = asyncio.Semaphore(CLOSE_CONCURRENCY)

        async def close(g: SimulatedGateway) -> None:
            async with gate:
                await g.close()

        if self.gateways:
            _log.info("fleet: stopping %d gateways", len(self.gateways))
            await asyncio.gather(*(close(g) for g in self.gateways))
            receipts = sum(g.stats.receipts for g in self.gateways)
            _log.info("fleet: stopped (%d alert receipts sent)", receipts)


# -- command line (registered in firmware_sim/cli.py) -------------------------------------------------


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def add_fleet_parser(sub: Any) -> None:
    """`firmware-sim fleet ...` on the CLI's subcommands (`sub` from add_subparsers)."""
    p: argparse.ArgumentParser = sub.add_parser("fleet", help="many simulated gateways against a cloud")
    p.add_argument("--gateways", type=int, required=True, metavar="N", help="how many gateways")
    p.add_argument(
        "--cloud", required=True, metavar="URL", help="the cloud's API, e.g. http://127.0.0.1:8000"
    )
    p.add_argument(
        "--token", metavar="TOKEN",
        help="installer or operator token, for gateways not yet provisioned (write --token=TOKEN: "
        "a token may begin with '-')",
    )  # fmt: skip
    p.add_argument(
        "--region", action="append", metavar="CODE",
        help="region code to spread the gateways over (repeatable; default: Liaoning counties)",
    )  # fmt: skip
    p.add_argument("--state", type=Path, metavar="DIR", help="keep identities and outboxes here (reused)")
    p.add_argument(
        "--duration", type=_positive, metavar="S", help="stop after S seconds (default: at SIGTERM)"
    )
    p.add_argument(
        "--telemetry-interval", type=_positive, default=DEFAULT_TELEMETRY_INTERVAL_S, metavar="S",
        help=f"seconds between telemetry reports of each gateway (default {DEFAULT_TELEMETRY_INTERVAL_S:g})",
    )  # fmt: skip
    p.add_argument("--id-prefix", default=DEFAULT_ID_PREFIX, help="gateway ids are PREFIX-00000, ...")
    p.add_argument(
        "--connect-batch", type=int, default=DEFAULT_CONNECT_BATCH, metavar="B",
        help=f"gateways connecting at once (default {DEFAULT_CONNECT_BATCH})",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=None, help="make the simulated homes repeatable")


def fleet_work(args: argparse.Namespace) -> Work:
    """What `firmware-sim fleet` runs; ValueError for arguments the fleet refuses."""
    settings = FleetSettings(
        gateways=args.gateways,
        cloud_url=args.cloud,
        token=args.token,
        regions=tuple(args.region) if args.region else DEFAULT_REGIONS,
        state_dir=args.state,
        duration_s=args.duration,
        telemetry_interval_s=args.telemetry_interval,
        id_prefix=args.id_prefix,
        connect_batch=args.connect_batch,
        seed=args.seed,
    )
    if not _log.isEnabledFor(logging.DEBUG):
        # A thousand links would each log their connects; the fleet reports progress itself.
        for name in ("cloud_bridge", "gateway", "httpx"):
            logging.getLogger(name).setLevel(logging.WARNING)

    async def work() -> None:
        try:
            await Fleet(settings).run()
        except FleetError as exc:
            _log.error("fleet: %s", exc)
            raise SystemExit(1) from exc

    return work
