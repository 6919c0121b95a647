"""`POST /v1/alerts` against hostile and broken input, targeting, idempotency and the records.

Runs on SQLite and on PostgreSQL. No gateway process here (see test_alerts_cloud.py): targeting
is checked against gateways provisioned through the API.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.integration.cloud_harness import DB_KINDS, CloudHarness, database_url, running_cloud

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cap"
XML = {"Content-Type": "application/cap+xml"}


@pytest.fixture(params=DB_KINDS)
async def cloud(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CloudHarness]:
    async with (
        database_url(request.param, tmp_path) as url,
        running_cloud(tmp_path / "cloud", url) as harness,
    ):
        yield harness


def now_cap(name: str, identifier: str | None = None) -> bytes:
    """A fixture sent now (expiring a day later)."""
    now = datetime.now(UTC).replace(microsecond=0)
    text = (FIXTURES / name).read_text()
    text = re.sub(r"<sent>[^<]*</sent>", f"<sent>{now.isoformat()}</sent>", text)
    text = re.sub(r"<(effective|onset|expires)>[^<]*</\1>", "", text)
    if identifier:
        text = re.sub(r"<identifier>[^<]*</identifier>", f"<identifier>{identifier}</identifier>", text)
    return text.encode()


def problem(resp: httpx.Response, status: int, reason: str) -> dict[str, object]:
    assert resp.status_code == status, resp.text
    detail = resp.json()["detail"]
    assert detail["reason"] == reason, detail
    assert detail["message"]
    return dict(detail)


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>&lol3;</identifier></alert>"""
XXE = b"""<?xml version="1.0"?>
<!DOCTYPE alert [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>&x;</identifier></alert>"""


async def test_hostile_and_broken_cap_is_refused_with_reasons(cloud: CloudHarness) -> None:
    post = cloud.api.post
    for body in (BILLION_LAUGHS, XXE):
        detail = problem(await post("/v1/alerts", content=body, headers=XML), 400, "invalid_cap")
        assert "document type" in str(detail["message"])
        assert "root:" not in str(detail)
    detail = problem(await post("/v1/alerts", content=b"\x00\xff<<garbage", headers=XML), 400, "invalid_cap")
    assert "well-formed" in str(detail["message"])
    no_status = now_cap("cn_rainstorm_orange_zh.xml").replace(b"<status>Actual</status>", b"")
    detail = problem(await post("/v1/alerts", content=no_status, headers=XML), 400, "invalid_cap")
    assert any("status" in r for r in detail["reasons"])  # type: ignore[attr-defined]
    problem(
        await post("/v1/alerts", content=b"{}", headers={"Content-Type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    problem(
        await post("/v1/alerts", content=b"[1, 2]", headers={"Content-Type": "application/json"}),
        400,
        "invalid_cap",
    )
    # Over the limit: refused by the declared length, and while streaming when none is declared.
    big = b"<" * 1_000_001
    problem(await post("/v1/alerts", content=big, headers=XML), 413, "too_large")

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b" " * 65536

    problem(await post("/v1/alerts", content=chunks(), headers=XML), 413, "too_large")
    # Nothing of that was kept.
    assert await cloud.get("/v1/alerts") == []


async def test_random_corruptions_of_a_real_alert_never_break_the_api(cloud: CloudHarness) -> None:
    """A seeded, bounded fuzz over the HTTP path: every answer is 201 or a 4xx with a reason."""
    base = now_cap("cn_rainstorm_orange_zh.xml")
    rng = random.Random(20261126)
    seen: dict[int, int] = {}
    for _ in range(150):
        data = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            op = rng.random()
            at = rng.randrange(len(data))
            if op < 0.5:
                data[at] = rng.randrange(256)
            elif op < 0.8:
                del data[at : at + rng.randint(1, 40)]
            else:
                data[at:at] = rng.choice([b"<", b"&amp;", b"\xe6\x9a", b"]]>", b"<!--", b"\x00"])
        resp = await cloud.api.post("/v1/alerts", content=bytes(data), headers=XML, params={"region": "2101"})
        seen[resp.status_code] = seen.get(resp.status_code, 0) + 1
        assert resp.status_code in (200, 201, 400), resp.text
        if resp.status_code == 400:
            assert resp.json()["detail"]["reason"] == "invalid_cap"
    assert seen.get(400, 0) > 0  # the corruptions did bite


async def test_targeting_idempotency_and_records(cloud: CloudHarness) -> None:
    for gw, region in (("sy-1", "210102"), ("sy-2", "210103"), ("dl-1", "210202"), ("cc-1", "220102")):
        await cloud.provision(gw, household=f"H-{gw}", region=region)
    post = cloud.api.post
    # Without ?region=, the CAP geocodes: 210102 and 210103000000 (written padded).
    orange = now_cap("cn_rainstorm_orange_zh.xml")  # once: a second later it would be a new message
    resp = await post("/v1/alerts", content=orange, headers=XML)
    assert resp.status_code == 201, resp.text
    first = resp.json()
    assert first["targets"] == ["210102", "210103"] and first["gateways_expected"] == 2
    assert resp.headers["location"] == f"/v1/alerts/{first['id']}"
    # The same message again: the same record, not sent again.
    again = await post("/v1/alerts", content=orange, headers=XML)
    assert (
        again.status_code == 200 and again.json()["duplicate"] is True and again.json()["id"] == first["id"]
    )
    # A province and a city in it: the province topic only (a gateway hears it once).
    resp = await post(
        "/v1/alerts", content=now_cap("cn_rainstorm_orange_zh.xml", "p-1"), headers=XML,
        params={"region": ["2101", "21", "210102"]},
    )  # fmt: skip
    assert resp.json()["targets"] == ["21"] and resp.json()["gateways_expected"] == 3
    # An alert with no Chinese region codes needs ?region=; a bad code is refused.
    amber = now_cap("oasis_a4_amber_alert.xml")
    problem(await post("/v1/alerts", content=amber, headers=XML), 400, "no_target")
    problem(
        await post("/v1/alerts", content=amber, headers=XML, params={"region": "21x"}), 400, "invalid_region"
    )
    resp = await post("/v1/alerts", content=amber, headers=XML, params={"region": "22"})
    assert resp.status_code == 201 and resp.json()["gateways_expected"] == 1
    # JSON in the model's field names works the same way.
    resp = await post("/v1/alerts", json={**_json_alert(), "identifier": "json-1"}, params={"region": "2102"})
    assert resp.status_code == 201, resp.text
    assert resp.json()["targets"] == ["2102"] and resp.json()["gateways_expected"] == 1

    listed = await cloud.get("/v1/alerts")
    assert [a["id"] for a in listed][-1] == first["id"]  # newest first
    assert len(listed) == 4 and all(a["state"] == "active" for a in listed)
    st = await cloud.get(f"/v1/alerts/{first['id']}")
    assert [g["id"] for g in st["gateways"]] == ["sy-1", "sy-2"]
    assert st["coverage"]["gateways_received"] == 0 and st["coverage"]["gateway_share"] == 0.0
    assert "暴雨橙色预警" in st["headline"]
    problem(await cloud.api.get("/v1/alerts/000000000000000000000000"), 404, "unknown_alert")


async def test_only_the_operator_sends_alerts(cloud: CloudHarness) -> None:
    body = now_cap("cn_rainstorm_orange_zh.xml")
    assert (await cloud.anon.post("/v1/alerts", content=body, headers=XML)).status_code == 401
    installer = {"Authorization": f"Bearer {cloud.installer_token}", **XML}
    resp = await cloud.anon.post("/v1/alerts", content=body, headers=installer)
    problem(resp, 403, "forbidden")


def _json_alert() -> dict[str, object]:
    from cloud_bridge.cap import parse_cap_xml

    return parse_cap_xml(now_cap("cn_rainstorm_orange_zh.xml")).model_dump(mode="json")


def cap_json(identifier: str, *, sent: datetime, expires: datetime | None, msg_type: str = "Alert",
             references: list[dict[str, str]] | None = None) -> dict[str, object]:  # fmt: skip
    alert = _json_alert()
    infos = [{**i, "effective": None, "onset": None, "expires": expires.isoformat() if expires else None}
             for i in alert["infos"]]  # type: ignore[attr-defined]  # fmt: skip
    return {**alert, "identifier": identifier, "sent": sent.isoformat(), "msg_type": msg_type,
            "references": references or [], "infos": infos}  # fmt: skip


async def test_the_operators_view_of_alerts_is_true(cloud: CloudHarness) -> None:
    from datetime import timedelta

    await cloud.provision("sy-1", household="H-1", region="210102")
    post = cloud.api.post
    now = datetime.now(UTC).replace(microsecond=0)

    # Long over before it was sent: refused, not stored, not published.
    old = cap_json("old-1", sent=now - timedelta(hours=2), expires=now - timedelta(hours=1))
    problem(await post("/v1/alerts", json=old), 422, "expired")
    problem(await post("/v1/alerts", content=(FIXTURES / "oasis_a2_thunderstorm.xml").read_bytes(),
                       headers=XML, params={"region": "21"}), 422, "expired")  # fmt: skip
    assert await cloud.get("/v1/alerts") == []

    # Expiry: listed in force until its time, then expired (when its time was up).
    soon = (
        await post("/v1/alerts", json=cap_json("soon-1", sent=now, expires=now + timedelta(seconds=2)))
    ).json()
    assert [a["id"] for a in await cloud.get("/v1/alerts", active=True)] == [soon["id"]]

    # An Update: the original is updated, the Update is in force.
    orig = (await post("/v1/alerts", json=cap_json("orig-1", sent=now, expires=None))).json()
    ref = {"sender": old["sender"], "identifier": "orig-1", "sent": now.isoformat()}
    upd = await post("/v1/alerts", json=cap_json("upd-1", sent=now + timedelta(seconds=1), expires=None,
                                                  msg_type="Update", references=[ref]))  # fmt: skip
    assert upd.status_code == 201 and upd.json()["state"] == "active"
    st = await cloud.get(f"/v1/alerts/{orig['id']}")
    assert st["state"] == "updated" and st["state_changed_at"] >= st["created_at"]

    # A Cancel that comes first: the alert it names is kept as cancelled and never sent.
    late = {"sender": old["sender"], "identifier": "late-1", "sent": now.isoformat()}
    cancel_body = cap_json("cancel-1", sent=now, expires=None, msg_type="Cancel", references=[late])
    cancel = await post("/v1/alerts", json=cancel_body, params={"region": "210102"})
    assert cancel.status_code == 201 and cancel.json()["state"] == "cancelled"  # a Cancel is never in force
    arrived = await post("/v1/alerts", json=cap_json("late-1", sent=now, expires=None))
    assert arrived.status_code == 201, arrived.text
    assert arrived.json()["state"] == "cancelled" and arrived.json()["envelope_id"] == ""

    async with asyncio.timeout(10):
        while (await cloud.get(f"/v1/alerts/{soon['id']}"))["state"] != "expired":
            await asyncio.sleep(0.2)
    st = await cloud.get(f"/v1/alerts/{soon['id']}")
    assert st["state_changed_at"] == st["expires_at"]
    active = {a["id"] for a in await cloud.get("/v1/alerts", active=True)}
    assert active == {upd.json()["id"]}
    states = {a["id"]: a["state"] for a in await cloud.get("/v1/alerts")}
    assert states == {soon["id"]: "expired", orig["id"]: "updated", upd.json()["id"]: "active",
                      cancel.json()["id"]: "cancelled", arrived.json()["id"]: "cancelled"}  # fmt: skip
