"""The installer's commands against a real gateway process: devices, approve, forget, doctor."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from gateway.broker import PrivateBroker
from tests.helpers import PLUG_ID, Watcher, announce_tasmota_plug, gateway_child


def gateway_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200", **(env or {})},
    )  # fmt: skip


async def test_devices_list_approve_forget(broker: PrivateBroker, tmp_path: Path) -> None:
    state = tmp_path / "state"
    announce_tasmota_plug(broker)
    # Tasmota is not auto-approved here, so the plug waits for the installer.
    child = gateway_child(broker, state, env={**os.environ, "GATEWAY_DISCOVERY__AUTO_APPROVE": "zigbee2mqtt"})
    common = ("--state-dir", str(state), "--id", "t1")
    async with Watcher(broker, "home/t1/#") as topics:
        await child.start()
        try:
            async with asyncio.timeout(10):
                while (
                    PLUG_ID
                    not in (await asyncio.to_thread(gateway_cli, "devices", "--pending", *common)).stdout
                ):
                    await asyncio.sleep(0.1)
            listed = await asyncio.to_thread(gateway_cli, "devices", *common, "--json")
            assert json.loads(listed.stdout) == []
            out = await asyncio.to_thread(
                gateway_cli,
                "devices",
                *common,
                "approve",
                PLUG_ID,
                "--name",
                "电视柜插座",
                "--room",
                "客厅",
            )
            assert out.returncode == 0, out.stderr
            info_topic = f"home/t1/device/{PLUG_ID}/info"
            await topics.wait(
                lambda: info_topic in topics.retained and topics.json(info_topic)["room"] == "客厅"
            )
            assert topics.json(info_topic)["name"] == "电视柜插座"
            table = await asyncio.to_thread(gateway_cli, "devices", *common)
            assert "电视柜插座" in table.stdout and "客厅" in table.stdout
            out = await asyncio.to_thread(gateway_cli, "devices", *common, "forget", PLUG_ID)
            assert out.returncode == 0, out.stderr
            await topics.wait(lambda: topics.retained.get(info_topic) == b"", what="info cleared")
            missing = await asyncio.to_thread(gateway_cli, "devices", *common, "forget", "nope")
            assert missing.returncode == 1 and "unknown_device" in missing.stderr
        finally:
            await child.stop()


async def test_pair_shows_the_pin_that_gives_a_household_token_for_devices_only(
    broker: PrivateBroker, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    announce_tasmota_plug(broker)
    child = gateway_child(broker, state, env={**os.environ, "GATEWAY_DISCOVERY__AUTO_APPROVE": "tasmota"})
    common = ("--state-dir", str(state), "--id", "t1")
    async with Watcher(broker, "cmnd/#") as commands:
        await child.start()
        try:
            shown = await asyncio.to_thread(gateway_cli, "pair", *common)
            assert shown.returncode == 0, shown.stderr
            found = re.search(r"Pairing PIN: (\d{6})", shown.stdout)
            assert found, shown.stdout
            url = (state / "http.url").read_text().strip()
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                r = await client.post("/api/v1/pair", json={"pin": found.group(1), "name": "妈妈的手机"})
                assert r.status_code == 200, r.text
                household = {"Authorization": f"Bearer {r.json()['token']}"}
                # The household uses devices with its token ...
                async with asyncio.timeout(10):
                    while (await client.get(f"/api/v1/devices/{PLUG_ID}")).status_code != 200:
                        await asyncio.sleep(0.1)
                r = await client.post(
                    f"/api/v1/devices/{PLUG_ID}/command", json={"on": True}, headers=household
                )
                assert r.status_code == 202, r.text
                await commands.wait_message(lambda m: m.topic == "cmnd/tasmota_B3C4D5/POWER", what="POWER")
                # ... but approving and forgetting stay the installer's.
                r = await client.delete(f"/api/v1/devices/{PLUG_ID}", headers=household)
                assert r.status_code == 401 and r.json() == {"detail": "Unauthorized"}
                listed = await asyncio.to_thread(gateway_cli, "pair", *common, "--list")
                assert "妈妈的手机" in listed.stdout
                revoked = await asyncio.to_thread(gateway_cli, "pair", *common, "--revoke", "妈妈的手机")
                assert revoked.returncode == 0, revoked.stderr
                r = await client.post(
                    f"/api/v1/devices/{PLUG_ID}/command", json={"on": False}, headers=household
                )
                assert r.status_code == 401
                # The PIN was spent by pairing: `gateway pair` now shows a new one.
                again = await asyncio.to_thread(gateway_cli, "pair", *common)
                assert found.group(1) not in again.stdout
        finally:
            await child.stop()


def test_devices_without_a_running_gateway_says_what_to_do(tmp_path: Path) -> None:
    out = gateway_cli("devices", "--state-dir", str(tmp_path), "--url", "http://127.0.0.1:9")
    assert out.returncode == 2
    assert "is `gateway run` running?" in out.stderr


async def test_doctor_passes_and_fails_with_one_line_per_check(broker: PrivateBroker, tmp_path: Path) -> None:
    common = ("doctor", "--mqtt", broker.url, "--state-dir", str(tmp_path / "s"), "--id", "t1")
    unprovisioned = await asyncio.to_thread(gateway_cli, *common)
    assert unprovisioned.returncode == 1
    assert re.search(r"✘ FAIL\s+identity .*gateway provision", unprovisioned.stdout), unprovisioned.stdout
    # A box that is not meant to talk to the cloud (cloud.enabled = false) passes.
    good = await asyncio.to_thread(gateway_cli, *common, env={"GATEWAY_CLOUD__ENABLED": "false"})
    assert good.returncode == 0, good.stdout + good.stderr
    for name in ("config", "registry", "broker", "clock"):
        assert re.search(rf"✔ OK\s+{name}", good.stdout), good.stdout
    await broker.stop()
    bad = await asyncio.to_thread(
        gateway_cli,
        "doctor",
        "--mqtt",
        broker.url,
        "--state-dir",
        str(tmp_path / "s"),
        "--id",
        "t1",
    )
    assert bad.returncode == 1
    assert re.search(r"✘ FAIL\s+broker .*mosquitto", bad.stdout), bad.stdout
    broken = tmp_path / "broken.toml"
    broken.write_text("[mqtt]\nurl = 'nope'\n")
    cfg = await asyncio.to_thread(gateway_cli, "doctor", "--config", str(broken))
    assert cfg.returncode == 1 and "✘ FAIL config" in cfg.stdout and "mqtt.url" in cfg.stdout


def test_run_with_a_broken_config_fails_at_start_naming_the_key(tmp_path: Path) -> None:
    broken = tmp_path / "g.toml"
    broken.write_text("[registry]\nsynchronous = 'SOMETIMES'\n")
    out = gateway_cli("run", "--config", str(broken))
    assert out.returncode == 2
    assert "registry.synchronous" in out.stderr and "'NORMAL' or 'FULL'" in out.stderr


@pytest.mark.skipif(not sys.stdout, reason="needs a stdout")
def test_demo_runs_and_leaves_nothing_behind(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "demo", "--http-port", "0", "--cloud-port", "0", "--no-live",
         "--duration", "90", "--alert-after", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert proc.stdout is not None
    seen = []
    table = alert = False
    try:
        for line in proc.stdout:
            seen.append(line)
            # The table shows live values of the simulated devices.
            table = table or ("客厅灯" in line and ("开 on" in line or "关 off" in line))
            # The operator's alert went through the cloud to both TVs and both speakers.
            alert = alert or bool(re.search(r"暴雨橙色预警.*gateways 1/1.*screens and speakers 4/4", line))
            if table and alert:
                break
        logs = next(line.split("logs in ")[1].strip() for line in seen if "logs in " in line)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert table and alert, "".join(seen[-30:])
    # The operator pushed a shop and the city's government services to the demo's region.
    assert re.search(r"Services 服务 .*北方云鲜生", "".join(seen)), "".join(seen[:30])
    assert proc.returncode == 0
    assert "nothing left running" in rest
    # No process of the demo survives it.
    leftovers = subprocess.run(["pgrep", "-f", logs], capture_output=True, text=True).stdout.split()
    assert leftovers == []
    assert not Path(logs).exists()


def test_factory_reset_forgets_every_household_token(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    for name in ("household_tokens.json", "admin.token", "registry.sqlite3", "http.url"):
        (state / name).write_text("x")
    out = gateway_cli("reset", "--factory", "--yes", "--state-dir", str(state), "--id", "t1")
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in state.iterdir()) == [] and "household_tokens.json" in out.stdout


async def test_logins_init_sets_up_the_boxs_broker_as_shipped(tmp_path: Path) -> None:
    """`gateway logins init` and systemd/mosquitto/gateway.conf make a broker that refuses
    anonymous clients and takes the gateway's own login."""
    from gateway.broker import free_port, mosquitto_binary
    from gateway.logins import plugin_path
    from gateway.mqtt import MqttClient

    dynsec, state = tmp_path / "dynamic-security.json", tmp_path / "state"
    out = gateway_cli("logins", "init", "--dynsec-file", str(dynsec), "--state-dir", str(state), "--id", "t1")
    assert out.returncode == 0, out.stderr
    assert "device_logins = true" in out.stdout
    for path in (dynsec, state / "mqtt.password"):
        assert path.stat().st_mode & 0o077 == 0, path
    assert (
        gateway_cli("logins", "init", "--dynsec-file", str(dynsec), "--state-dir", str(state)).returncode == 2
    )
    port = free_port()
    shipped = (Path(__file__).resolve().parents[2] / "systemd" / "mosquitto" / "gateway.conf").read_text()
    here = {  # the same config on this machine: a free port, this machine's paths
        "listener": f"listener {port} 127.0.0.1",
        "plugin": f"plugin {plugin_path()}",
        "plugin_opt_config_file": f"plugin_opt_config_file {dynsec}",
        "persistence_location": f"persistence_location {tmp_path}/",
        "log_dest": "log_dest stderr",
    }
    conf = [here.get(line.split(" ", 1)[0], line) for line in shipped.splitlines() if "192.168." not in line]
    if os.geteuid() == 0:
        conf.append("user root")
    (tmp_path / "mosquitto.conf").write_text("\n".join(conf) + "\n")
    proc = await asyncio.create_subprocess_exec(
        mosquitto_binary(), "-c", str(tmp_path / "mosquitto.conf"), stderr=asyncio.subprocess.PIPE
    )
    try:
        client = MqttClient(
            host="127.0.0.1", port=port, client_id="gateway-t1", name="t", username="gateway",
            password=(state / "mqtt.password").read_text().strip(), reconnect_max_s=0.3,
        )  # fmt: skip
        task = asyncio.create_task(client.run())
        await client.wait_connected(10)
        await client.close()
        await task
        anonymous = subprocess.run(
            ["mosquitto_pub", "-p", str(port), "-t", "x", "-m", "y"], capture_output=True, timeout=10
        )
        assert anonymous.returncode != 0
    finally:
        proc.terminate()
        await proc.wait()
