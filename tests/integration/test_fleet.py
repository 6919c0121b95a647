"""`firmware-sim fleet` as a real child process against the reference cloud in this process.

Twenty simulated gateways are provisioned through the operator API (work orders and claims),
each runs the real CloudAgent with its own outbox and mutual-TLS connection to the cloud's
Mosquitto, and the cloud sees them: online, with device shadows from their telemetry, receipts
for an alert to exactly the gateways of the targeted city, and offline after SIGTERM.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from cloud_bridge.examples import rainstorm_alert
from gateway.procs import Child
from tests.integration.cloud_harness import CloudHarness, running_cloud

pytestmark = pytest.mark.netns

N = 20
# Two districts of Shenyang (city 2101), one of Dalian (2102), one of Anshan (2103).
REGIONS = ("210102", "210103", "210202", "210302")
CITY = "2101"
PROVINCE = "21"


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[CloudHarness]:
    async with running_cloud(tmp_path / "cloud", f"sqlite://{tmp_path / 'cloud.sqlite3'}") as harness:
        yield harness


async def until(
    cloud: CloudHarness, check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 30
) -> None:
    """Check again after every commit of the cloud's uplink writer (presence, receipts,
    telemetry all land through it) until `check` holds."""
    service = cloud.cloud.service
    assert service is not None
    changed = asyncio.Event()

    def on_commit(online: set[str], receipts: list[Any]) -> None:
        changed.set()

    service.listeners.append(on_commit)
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                changed.clear()
                if await check():
                    return
                await changed.wait()
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}") from None
    finally:
        service.listeners.remove(on_commit)


async def send_alert(cloud: CloudHarness, region: str) -> dict[str, Any]:
    resp = await cloud.api.post(
        "/v1/alerts",
        content=rainstorm_alert("orange", region),
        params={"region": region},
        headers={"Content-Type": "application/cap+xml"},
    )
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


async def test_a_fleet_comes_online_gets_a_city_alert_and_goes_offline(
    cloud: CloudHarness, tmp_path: Path
) -> None:
    ids = {f"fleet-{i:05d}" for i in range(N)}
    region_args = [arg for code in REGIONS for arg in ("--region", code)]
    fleet = Child(
        "fleet",
        [
            sys.executable, "-m", "firmware_sim.cli", "fleet", "--gateways", str(N),
            "--cloud", cloud.cloud.api_url, f"--token={cloud.installer_token}",  # may begin with "-"
            "--state", str(tmp_path / "fleet"), "--connect-batch", "8", *region_args,
        ],
        log_path=tmp_path / "fleet.log",
        ready=rf"fleet ready: {N} gateways connected",
    )  # fmt: skip
    await fleet.start(timeout_s=90)
    try:
        # Every gateway is online in the cloud's registry, spread over the given regions.
        async def all_online() -> bool:
            online = await cloud.get("/v1/gateways", online="true")
            return ids <= {g["id"] for g in online}

        await until(cloud, all_online, f"{N} gateways online")
        gateways = {g["id"]: g for g in await cloud.get("/v1/gateways")}
        assert set(gateways) == ids
        assert {g["region"] for g in gateways.values()} == set(REGIONS)
        in_city = {gw for gw, g in gateways.items() if g["region"].startswith(CITY)}
        assert len(in_city) == N // 2

        # Telemetry reached the cloud: each gateway has its simulated home's shadows.
        async def shadows() -> bool:
            return all(g["devices"] == 2 for g in await cloud.get("/v1/gateways"))

        await until(cloud, shadows, "device shadows of every gateway")

        # An alert to the city, then one to the whole province. The cloud publishes both on
        # its one connection in this order, and each gateway sends its receipts in the order
        # it got the alerts, so once every gateway has receipted the second, any gateway
        # that got the first has receipted it too.
        city = await send_alert(cloud, CITY)
        assert city["targets"] == [CITY]
        assert city["gateways_expected"] == len(in_city)
        province = await send_alert(cloud, PROVINCE)

        async def province_received() -> bool:
            status = await cloud.get(f"/v1/alerts/{province['id']}")
            return bool(status["coverage"]["gateways_received"] == N)

        await until(cloud, province_received, "receipts of the province alert from every gateway")
        status = await cloud.get(f"/v1/alerts/{city['id']}")
        received = {g["id"] for g in status["gateways"] if g["received"]}
        assert received == in_city
        assert not [g for g in status["gateways"] if g["unexpected"]]
        assert {g["result"] for g in status["gateways"]} == {"verified"}
        assert status["coverage"]["gateway_share"] == 1.0
    finally:
        code = await fleet.stop(timeout_s=30)
    assert code == 0, fleet.log_tail(30)
    assert "fleet: stopped" in fleet.log_tail(30)

    async def all_offline() -> bool:
        online = await cloud.get("/v1/gateways", online="true")
        return not ids & {g["id"] for g in online}

    await until(cloud, all_offline, "every gateway offline after SIGTERM")

    # Started again on the same state, the fleet reuses its identities (no new work orders).
    await fleet.start(timeout_s=90)
    try:
        await until(cloud, all_online, f"{N} gateways online again")
    finally:
        code = await fleet.stop(timeout_s=30)
    assert code == 0, fleet.log_tail(30)
    log = (tmp_path / "fleet.log").read_text()
    assert f"{N} gateways provisioned (0 new, {N} reused)" in log
