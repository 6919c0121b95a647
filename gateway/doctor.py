"""`gateway doctor`: installer diagnostics, one line per check, non-zero exit on failure."""

from __future__ import annotations

import asyncio
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from gateway.config import Settings
from gateway.errors import BrokerError, GatewayError, RegistryError
from gateway.mqtt import MqttClient
from gateway.registry import Registry

__all__ = ["Check", "run_doctor"]

#: The clock must not be earlier than this release was built (a box with a dead RTC boots in 1970).
BUILD_DATE = datetime(2026, 11, 1, tzinfo=UTC)
_MAX_FUTURE_DAYS = 3650


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


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
    client = MqttClient(
        host=settings.mqtt.host,
        port=settings.mqtt.port,
        client_id=f"{settings.mqtt_client_id}-doctor",
        username=settings.mqtt.username,
        password=settings.mqtt.password.get_secret_value() if settings.mqtt.password else None,
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
    if ok:
        return Check("broker", True, f"{settings.mqtt.url} reachable")
    return Check(
        "broker",
        False,
        f"cannot connect to {settings.mqtt.url}; is mosquitto running? (systemctl status mosquitto)",
    )


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
    checks.append(_check_clock())
    for check in checks:
        mark = "[green]✔ OK  [/green]" if check.ok else "[red]✘ FAIL[/red]"
        console.print(f"{mark} {check.name:<10} {check.detail}")
    failed = [c for c in checks if not c.ok]
    console.print(f"{len(checks) - len(failed)}/{len(checks)} checks passed")
    return 1 if failed else 0
