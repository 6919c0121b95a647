"""`gateway doctor`: installer diagnostics, one line per check, non-zero exit on failure."""

from __future__ import annotations

import asyncio
import os
import ssl
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
from rich.console import Console

from cloud_bridge.identity import Identity, NotProvisioned
from cloud_bridge.protocol import BridgeError
from gateway.config import Settings
from gateway.daemon import HTTP_URL_FILE, broker_password
from gateway.errors import BrokerError, GatewayError, RegistryError
from gateway.mqtt import MqttClient
from gateway.registry import Registry
from gateway.web import load_admin_token

__all__ = ["Check", "run_doctor"]

#: The clock must not be earlier than this release was built (a box with a dead RTC boots in 1970).
BUILD_DATE = datetime(2026, 11, 1, tzinfo=UTC)
_MAX_FUTURE_DAYS = 3650
CERT_WARN_DAYS = 30
MAX_SKEW_S = 300


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    #: Passed, but the installer should look (it never fails the run).
    warn: bool = False


def _probe_writable(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True, mode=0o750)
    fd, probe = tempfile.mkstemp(dir=d, prefix=".doctor-")
    os.close(fd)
    Path(probe).unlink()


async def _check_state_dir(settings: Settings) -> Check:
    d = settings.state_dir
    try:
        await asyncio.to_thread(_probe_writable, d)
    except OSError as exc:
        return Check(
            "state dir",
            False,
            f"{d} is not writable ({exc.strerror}); fix its owner or set --state-dir",
        )
    try:
        async with Registry(d, synchronous=settings.registry.synchronous) as reg:
            mode, sync = await reg.pragmas()
            count = len(await reg.devices())
    except RegistryError as exc:
        return Check("registry", False, f"{exc}; move the file aside to start afresh")
    return Check("registry", True, f"{reg.path} ({count} devices, journal_mode={mode}, synchronous={sync})")


async def _check_broker(settings: Settings) -> Check:
    """Connect as the gateway would. With device logins the check connects anonymously and
    expects a refusal: client ids are user names there, so the gateway's own login would take
    the running daemon's session (its connection shows on the `lan` line instead)."""
    anonymous = settings.mqtt.device_logins
    client = MqttClient(
        host=settings.mqtt.host,
        port=settings.mqtt.port,
        client_id=f"{settings.mqtt_client_id}-doctor",
        username=None if anonymous else settings.mqtt.username,
        password=None if anonymous else broker_password(settings),
        connect_timeout_s=settings.mqtt.connect_timeout_s,
        reconnect_max_s=1.0,
        name="doctor",
    )
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(client.run())
        try:
            await client.wait_connected(settings.mqtt.connect_timeout_s)
            ok = True
        except BrokerError:
            ok = False
        await client.close()
        task.cancel()
    url = settings.mqtt.url
    if anonymous and ok:
        return Check(
            "broker", False, f"{url} accepts anonymous clients; install systemd/mosquitto/gateway.conf"
        )
    if anonymous and "refused us" in client.last_error:
        return Check("broker", True, f"{url} reachable; anonymous clients refused (a login per device)")
    if ok:
        return Check("broker", True, f"{url} reachable")
    return Check(
        "broker", False, f"cannot connect to {url}; is mosquitto running? (systemctl status mosquitto)"
    )


async def _check_cloud(settings: Settings) -> list[Check]:
    """Identity, certificate, cloud reachability (mutual TLS) and clock skew against the cloud."""
    try:
        identity = await asyncio.to_thread(Identity.load, settings.state_dir)
    except NotProvisioned:
        return [Check("identity", False, "not provisioned; run `gateway provision --cloud URL --code CODE`")]
    except BridgeError as exc:
        return [Check("identity", False, str(exc))]
    rec = identity.record
    checks = [Check("identity", True, f"{rec.gateway_id}, household {rec.household}, region {rec.region}")]
    try:
        cert = identity.certificate()
    except (OSError, BridgeError) as exc:
        return [*checks, Check("cert", False, f"cannot read the certificate ({exc}); provision again")]
    now = datetime.now(UTC)
    days_left = (cert.not_after - now).days
    if now < cert.not_before:
        checks.append(Check("cert", False, f"not valid before {cert.not_before:%Y-%m-%d}; check the clock"))
    elif now > cert.not_after:
        checks.append(
            Check(
                "cert", False, f"expired on {cert.not_after:%Y-%m-%d}; provision again with a new work order"
            )
        )
    else:
        note = " — renew soon" if days_left < CERT_WARN_DAYS else ""
        checks.append(Check("cert", True, f"valid until {cert.not_after:%Y-%m-%d} ({days_left} days){note}"))
    try:
        host, port = identity.mqtt_host_port()
        client = MqttClient(
            host=host,
            port=port,
            client_id=f"{rec.gateway_id}-doctor",
            tls=identity.tls_context(),
            connect_timeout_s=settings.mqtt.connect_timeout_s,
            reconnect_max_s=1.0,
            name="doctor-cloud",
        )
    except (OSError, BridgeError, ssl.SSLError) as exc:
        checks.append(Check("cloud", False, f"cannot set up TLS ({exc}); provision again"))
        return checks
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(client.run())
        try:
            await client.wait_connected(settings.mqtt.connect_timeout_s)
            reachable = True
        except BrokerError:
            reachable = False
        await client.close()
        task.cancel()
    if reachable:
        checks.append(Check("cloud", True, f"{rec.mqtt_url} reachable with mutual TLS"))
    else:
        checks.append(
            Check(
                "cloud",
                False,
                f"cannot connect to {rec.mqtt_url} (network, or a certificate the cloud does not accept)",
            )
        )
    if rec.api_url:
        try:
            async with httpx.AsyncClient(timeout=5, trust_env=False) as http:
                response = await http.get(rec.api_url.rstrip("/") + "/v1/health")
            cloud_time = datetime.fromisoformat(str(response.json()["time"]).replace("Z", "+00:00"))
            skew = abs((datetime.now(UTC) - cloud_time).total_seconds())
            ok = skew <= MAX_SKEW_S
            detail = f"{skew:.1f} s off the cloud's clock" + ("" if ok else "; set the time (NTP)")
            checks.append(Check("skew", ok, detail))
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            checks.append(
                Check("skew", False, f"cannot read the cloud's time at {rec.api_url} ({type(exc).__name__})")
            )
    return checks


async def _check_lan(settings: Settings) -> Check:
    """What the running daemon refused from the home network: drops, rejects and impostors
    per adapter (its admin health view)."""
    try:
        url = (settings.state_dir / HTTP_URL_FILE).read_text().strip()
        token = load_admin_token(settings.state_dir)
    except OSError:
        return Check("lan", True, "the gateway is not running here; no counters to show", warn=True)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5.0, trust_env=False) as client:
            r = await client.get("/api/v1/health/detail", headers={"Authorization": f"Bearer {token}"})
        r.raise_for_status()
        health = r.json()
    except (httpx.HTTPError, ValueError) as exc:
        return Check("lan", True, f"the gateway at {url} did not answer ({type(exc).__name__})", warn=True)
    drops: dict[str, dict[str, int]] = health.get("drops", {})
    impostors = int(health.get("impostors", 0))
    link = "" if health.get("mqtt_connected") else "; the gateway is NOT connected to its broker"
    if not drops:
        waiting = health.get("pending", 0)
        return Check("lan", not link, f"nothing refused from the home network; {waiting} devices wait{link}")
    per_adapter = ", ".join(
        f"{adapter} {sum(reasons.values())} ({', '.join(f'{r} {n}' for r, n in sorted(reasons.items())[:4])})"
        for adapter, reasons in sorted(drops.items())
    )
    note = f"; {impostors} impostor announcements: see `gateway devices --pending`" if impostors else ""
    return Check("lan", not link, f"refused: {per_adapter}{note}{link}", warn=bool(impostors))


def _check_clock(now: datetime | None = None) -> Check:
    now = now or datetime.now(UTC)
    if now < BUILD_DATE:
        return Check(
            "clock",
            False,
            f"system time {now:%Y-%m-%d %H:%M}Z is before this release; set the time (NTP)",
        )
    if (now - BUILD_DATE).days > _MAX_FUTURE_DAYS:
        return Check("clock", False, f"system time {now:%Y-%m-%d}Z is implausibly far ahead; check NTP")
    return Check("clock", True, f"{now:%Y-%m-%d %H:%M:%S}Z")


async def run_doctor(
    settings: Settings | None,
    settings_error: GatewayError | None,
    *,
    config_path: Path | None = None,
) -> int:
    console = Console(highlight=False)
    checks: list[Check] = []
    if settings is None:
        checks.append(Check("config", False, str(settings_error)))
    else:
        where = str(config_path) if config_path else "defaults and GATEWAY_* variables"
        checks.append(Check("config", True, f"valid ({where}); gateway id {settings.id}"))
        checks.append(await _check_state_dir(settings))
        checks.append(await _check_broker(settings))
        if settings.cloud.enabled:
            checks += await _check_cloud(settings)
        checks.append(await _check_lan(settings))
    checks.append(_check_clock())
    for check in checks:
        mark = "[green]✔ OK  [/green]" if check.ok else "[red]✘ FAIL[/red]"
        if check.ok and check.warn:
            mark = "[yellow]⚠ WARN[/yellow]"
        console.print(f"{mark} {check.name:<10} {check.detail}")
    failed = [c for c in checks if not c.ok]
    console.print(f"{len(checks) - len(failed)}/{len(checks)} checks passed")
    return 1 if failed else 0
