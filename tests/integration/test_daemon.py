"""The daemon as a real process: systemd protocol, SIGTERM, kill -9 and restart."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from gateway.broker import PrivateBroker
from tests.helpers import PLUG_ID, Watcher, announce_tasmota_plug, gateway_child

REPO = Path(__file__).resolve().parents[2]


async def _recv_notifications(sock: socket.socket, until: str, timeout: float) -> list[str]:
    loop = asyncio.get_running_loop()
    got: list[str] = []
    async with asyncio.timeout(timeout):
        while not any(until in g for g in got):
            data = await loop.sock_recv(sock, 4096)
            got.append(data.decode())
    return got


async def test_systemd_notify_watchdog_and_clean_sigterm(broker: PrivateBroker, tmp_path: Path) -> None:
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.setblocking(False)
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "200000"}
    child = gateway_child(broker, tmp_path / "state", env=env)
    async with Watcher(broker, "home/t1/status") as topics:
        try:
            await child.start()
            await _recv_notifications(sock, "READY=1", 5)
            for _ in range(3):  # pings keep coming after readiness
                await _recv_notifications(sock, "WATCHDOG=1", 2)
            await topics.wait(lambda: topics.retained.get("home/t1/status") == b"online", what="online")
            assert child.pid is not None
            os.kill(child.pid, signal.SIGTERM)
            # The contract: a clean shutdown within 2 s, exit code 0, status offline.
            async with asyncio.timeout(2.5):
                code = await child.stop(timeout_s=2.0)
            assert code == 0, child.log_tail()
            assert "stopped" in child.log_tail()
            await topics.wait(lambda: topics.retained.get("home/t1/status") == b"offline", what="offline")
            rest = await _recv_notifications(sock, "STOPPING=1", 1)
            assert rest
        finally:
            await child.kill()
            sock.close()


async def test_kill_9_keeps_registry_and_ids(broker: PrivateBroker, tmp_path: Path) -> None:
    state = tmp_path / "state"
    announce_tasmota_plug(broker)
    for round_ in range(3):
        child = gateway_child(broker, state)
        try:
            await child.start()
            url = (state / "http.url").read_text().strip()
            token = (state / "admin.token").read_text().strip()
            async with httpx.AsyncClient(base_url=url, timeout=5) as http:
                async with asyncio.timeout(10):
                    while True:
                        devices = (await http.get("/api/v1/devices")).json()
                        if devices:
                            break
                        await asyncio.sleep(0.05)
                assert [d["info"]["id"] for d in devices] == [PLUG_ID]
                if round_ == 0:
                    r = await http.post(
                        f"/api/v1/devices/{PLUG_ID}/approve",
                        json={"name": "电视柜插座", "room": "客厅"},
                        headers={"Authorization": f"Bearer {token}"},
                    )
                    assert r.status_code == 200, r.text
                else:
                    # Written before the kill, so it is still there.
                    assert devices[0]["info"]["name"] == "电视柜插座"
                    assert devices[0]["info"]["room"] == "客厅"
            assert child.pid is not None
            os.kill(child.pid, signal.SIGKILL)
        finally:
            await child.kill()


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = (REPO / "systemd" / "gateway.service").read_text()
    # verify insists that ExecStart exists; point it at this checkout's entry point.
    venv_gateway = Path(os.sys.executable).with_name("gateway")
    unit = unit.replace("/usr/bin/gateway", str(venv_gateway))
    path = tmp_path / "gateway.service"
    path.write_text(unit)
    out = subprocess.run(
        [analyze, "verify", "--man=no", str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "gateway.service" not in out.stderr, out.stderr  # no warnings about our unit
    for required in (
        "Type=notify", "WatchdogSec=", "Restart=on-failure", "User=gateway", "StateDirectory=gateway",
        "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
        "RestrictAddressFamilies=", "CapabilityBoundingSet=\n",
    ):  # fmt: skip
        assert required in unit, required
    security = subprocess.run(
        [analyze, "security", "--offline=true", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if security.returncode == 0 and "Overall exposure level" in security.stdout:
        level = float(security.stdout.split("Overall exposure level for gateway.service:")[1].split()[0])
        assert level <= 2.5, security.stdout[-2000:]
