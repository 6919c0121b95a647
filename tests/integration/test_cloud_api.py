"""The reference cloud's HTTP API: tokens and roles, work orders, provisioning errors, reads.

Runs on SQLite and on PostgreSQL (a fresh database per test).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from cloud_bridge.ca import cert_info, make_csr
from cloud_bridge.cloud.api import normalize_code
from tests.integration.cloud_harness import DB_KINDS, CloudHarness, database_url, running_cloud


@pytest.fixture(params=DB_KINDS)
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with database_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture
async def cloud(db_url: str, tmp_path: Path) -> AsyncIterator[CloudHarness]:
    async with running_cloud(tmp_path / "cloud", db_url) as harness:
        yield harness


def _problem(resp: httpx.Response, status: int, reason: str) -> None:
    assert resp.status_code == status, resp.text
    detail = resp.json()["detail"]
    assert detail["reason"] == reason, detail
    assert detail["message"]


async def _provision(
    cloud: CloudHarness, code: str, gateway_id: str, cn: str | None = None
) -> httpx.Response:
    _, csr = make_csr(cn or gateway_id)
    return await cloud.anon.post(
        "/v1/provision", json={"code": code, "gateway_id": gateway_id, "csr_pem": csr.decode()}
    )


async def test_tokens_and_roles(cloud: CloudHarness, tmp_path: Path) -> None:
    health = await cloud.anon.get("/v1/health")
    assert health.status_code == 200
    assert health.json()["ok"] is True and health.json()["version"] and health.json()["time"].endswith("Z")

    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {cloud.operator_token}"}):
        for method, path in (
            ("GET", "/v1/gateways"),
            ("POST", "/v1/workorders"),
            ("POST", "/v1/keys/rotate"),
        ):
            resp = await cloud.anon.request(method, path, headers=headers, json={})
            assert resp.status_code == 401, (method, path, resp.text)
            assert resp.json() == {"detail": "Unauthorized"}  # nothing more for a stranger
            assert resp.headers["www-authenticate"] == "Bearer"

    installer = {"Authorization": f"Bearer {cloud.installer_token}"}
    resp = await cloud.anon.post(
        "/v1/workorders", headers=installer, json={"household": "H-9", "region": "21"}
    )
    assert resp.status_code == 201, resp.text
    _problem(await cloud.anon.get("/v1/gateways", headers=installer), 403, "forbidden")
    _problem(await cloud.anon.post("/v1/keys/rotate", headers=installer), 403, "forbidden")

    tokens = tmp_path / "cloud" / "tokens"
    for role, value in (("operator", cloud.operator_token), ("installer", cloud.installer_token)):
        token_file = tokens / f"{role}.token"
        assert token_file.read_text().strip() == value
        assert token_file.stat().st_mode & 0o777 == 0o600
    assert cloud.operator_token != cloud.installer_token

    spec = (await cloud.anon.get("/openapi.json")).json()
    for path in (
        "/v1/health",
        "/v1/workorders",
        "/v1/provision",
        "/v1/gateways",
        "/v1/gateways/{gateway_id}",
        "/v1/gateways/{gateway_id}/devices",
        "/v1/gateways/{gateway_id}/commands",
        "/v1/uplinks",
        "/v1/security-events",
        "/v1/services/push",
        "/v1/services",
        "/v1/keys/rotate",
    ):
        assert path in spec["paths"], path


async def test_work_orders_and_provisioning_errors(cloud: CloudHarness) -> None:
    order = await cloud.workorder("沈阳-和平-001", "210102")
    code = order["code"]
    assert len(code) == 12 and code[4] == code[9] == "-"
    assert len(normalize_code(code)) == 10 and not set(normalize_code(code)) & set("01IO")
    assert datetime.fromisoformat(order["expires_at"]) > datetime.fromisoformat(
        (await cloud.anon.get("/v1/health")).json()["time"]
    )

    for region in ("2101023", "21a", "", "210102001002003"):
        _problem(
            await cloud.api.post("/v1/workorders", json={"household": "H", "region": region}),
            422,
            "invalid_request",
        )
    _problem(
        await cloud.api.post("/v1/workorders", json={"household": "", "region": "21"}), 422, "invalid_request"
    )

    _problem(await _provision(cloud, "AAAA-BBBB-CC", "gw-x"), 404, "unknown_code")
    # A CSR for another name, or no CSR at all: refused, and the code is not used up.
    _problem(await _provision(cloud, code, "gw-x", cn="gw-other"), 400, "bad_csr")
    resp = await cloud.anon.post(
        "/v1/provision", json={"code": code, "gateway_id": "gw-x", "csr_pem": "hello"}
    )
    _problem(resp, 400, "bad_csr")
    _problem(await _provision(cloud, code, "cloud-service"), 400, "bad_csr")
    _problem(await _provision(cloud, code, "GW/../x"), 422, "invalid_request")

    # Typed by hand: lower case, no dashes.
    resp = await _provision(cloud, normalize_code(code).lower(), "gw-x")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["gateway_id"], body["household"], body["region"]) == ("gw-x", "沈阳-和平-001", "210102")
    assert body["mqtt_url"].startswith("mqtts://127.0.0.1:") and body["api_url"] == cloud.cloud.api_url
    assert cert_info(body["certificate_pem"].encode()).common_name == "gw-x"
    assert body["ca_pem"] == (cloud.cloud.settings.data_dir / "ca" / "ca.pem").read_text()
    assert [k["kid"] for k in body["trust"]] == [(await cloud.get("/v1/keys"))[0]["kid"]]

    _problem(await _provision(cloud, code, "gw-y"), 409, "code_used")

    short = await cloud.workorder("H-2", "2102", ttl_s=0.05)
    expires = datetime.fromisoformat(short["expires_at"])
    now = datetime.fromisoformat((await cloud.anon.get("/v1/health")).json()["time"])
    if now <= expires:  # waiting on the clock itself, not on another task
        await asyncio.sleep((expires - now).total_seconds() + 0.01)
    _problem(await _provision(cloud, short["code"], "gw-y"), 410, "code_expired")

    # Re-provisioning the same box with a new work order: new certificate, new region.
    first = await cloud.get("/v1/gateways/gw-x")
    again = await cloud.workorder("沈阳-和平-001", "210103")
    resp = await _provision(cloud, again["code"], "gw-x")
    assert resp.status_code == 200, resp.text
    assert (
        cert_info(resp.json()["certificate_pem"].encode()).fingerprint
        != cert_info(body["certificate_pem"].encode()).fingerprint
    )
    second = await cloud.get("/v1/gateways/gw-x")
    assert second["region"] == "210103" and first["region"] == "210102"
    acl = cloud.cloud.acl_path.read_text()
    assert "topic read bfy/v1/region/210103/#" in acl and "region/210102/" not in acl
    assert acl.count("user gw-x") == 1


async def test_reads_and_unknown_ids(cloud: CloudHarness) -> None:
    await cloud.provision("gw-1", region="210102")
    await cloud.provision("gw-2", region="210202")
    await cloud.provision("gw-3", region="2102")
    assert [g["id"] for g in await cloud.get("/v1/gateways")] == ["gw-1", "gw-2", "gw-3"]
    assert [g["id"] for g in await cloud.get("/v1/gateways", region="2102")] == ["gw-2", "gw-3"]
    assert [g["id"] for g in await cloud.get("/v1/gateways", region="21")] == ["gw-1", "gw-2", "gw-3"]
    assert await cloud.get("/v1/gateways", region="22") == []
    assert await cloud.get("/v1/gateways", online="true") == []
    g = await cloud.get("/v1/gateways/gw-1")
    assert g == {
        "id": "gw-1",
        "household": "H-1",
        "region": "210102",
        "online": False,
        "last_seen": None,
        "version": "",
        "cert_not_after": g["cert_not_after"],
        "devices": 0,
    }
    assert await cloud.get("/v1/gateways/gw-1/devices") == []
    assert await cloud.get("/v1/uplinks") == []
    assert await cloud.get("/v1/security-events") == []
    assert await cloud.get("/v1/services") == []

    _problem(await cloud.api.get("/v1/gateways/gw-9"), 404, "unknown_gateway")
    _problem(await cloud.api.get("/v1/gateways/gw-9/devices"), 404, "unknown_gateway")
    _problem(
        await cloud.api.post("/v1/gateways/gw-9/commands", json={"name": "reboot"}), 404, "unknown_gateway"
    )
    _problem(await cloud.api.get("/v1/commands/nope"), 404, "unknown_command")
    resp = await cloud.api.post(
        "/v1/services/push",
        json={
            "target": {"gateways": ["gw-9"]},
            "service": {"service_id": "s", "version": 1, "kind": "info", "title": "s", "body": "b"},
        },
    )
    _problem(resp, 404, "unknown_gateway")
    _problem(
        await cloud.api.post("/v1/gateways/gw-1/commands", json={"name": "format_disk"}),
        422,
        "invalid_request",
    )
    targets: list[dict[str, object]] = [
        {},
        {"regions": ["2101"], "all": True},
        {"regions": ["999"]},
        {"regions": []},
    ]
    for target in targets:
        resp = await cloud.api.post(
            "/v1/services/push",
            json={
                "target": target,
                "service": {"service_id": "s", "version": 1, "kind": "info", "title": "s", "body": "b"},
            },
        )
        _problem(resp, 422, "invalid_request")
