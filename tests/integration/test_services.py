"""Operator services end to end: a definition pushed with one operator API call → a real
gateway process (cached, listed, served) → an order from the box → the cloud's shop back end
(price and stock checked, one order per idempotency key) → payment by the simulated callback →
status back on the box. Also: offline ordering, kill -9 between "placed" and "confirmed",
withdrawal, a price change shown before confirming again, government queries (request/reply
with timeouts; the ID number never kept on the box) and idempotent bookings.

Real parts: the reference cloud (uvicorn, SQLite or PostgreSQL, Mosquitto with mutual TLS), the
gateway as a child process on its own Mosquitto, a TCP proxy to cut the cloud link.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud_bridge.protocol import new_envelope
from gateway.broker import PrivateBroker
from gateway.procs import Child
from tests.helpers import SCREENSHOTS, Watcher, gateway_child, mosquitto_pub
from tests.integration.cloud_harness import (
    DB_KINDS,
    CloudHarness,
    GatewayLink,
    database_url,
    install_identity,
    running_cloud,
)
from tests.tcpproxy import FaultProxy

GW = "gw-shop"
REGION = "210102"  # 沈阳市和平区
# A 1×1 PNG: the smallest real inline image.
PIXEL = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
ID_NUMBER = "11010519491231002X"  # the GB 11643 standard's own example

SHOP: dict[str, Any] = {
    "service_id": "shop.fresh",
    "version": 1,
    "kind": "shop",
    "title": "北方云鲜生",
    "title_en": "Beifang Fresh",
    "description": "本地牧场直送，次日达。",
    "categories": [
        {"id": "dairy", "title": "乳品", "title_en": "Dairy"},
        {"id": "grain", "title": "粮油", "title_en": "Grain & oil"},
    ],
    "items": [
        {"id": "milk-box", "category": "dairy", "title": "辉山纯牛奶 250ml×24",
         "title_en": "Huishan milk 24×250 ml", "unit": "箱", "unit_en": "box", "price_fen": 6990,
         "stock": 100, "image": PIXEL},
        {"id": "yogurt", "category": "dairy", "title": "原味酸奶 1kg", "title_en": "Plain yogurt 1 kg",
         "unit": "桶", "unit_en": "tub", "price_fen": 1880, "stock": 3},
        {"id": "rice-5kg", "category": "grain", "title": "盘锦大米 5kg", "title_en": "Panjin rice 5 kg",
         "unit": "袋", "unit_en": "bag", "price_fen": 5900, "stock": 50},
    ],
    "delivery_areas": ["2101"],
}  # fmt: skip

GOV: dict[str, Any] = {
    "service_id": "gov.shenyang",
    "version": 1,
    "kind": "gov",
    "title": "沈阳政务服务",
    "title_en": "Shenyang government services",
    "notices": [
        {"id": "heating-2024", "title": "2024—2025年供暖季开始",
         "title_en": "Heating season 2024–2025 begins",
         "body": "全市供暖自11月1日起，至次年3月31日止。如室温不达标，请拨打 12345。",
         "body_en": "Heating runs from 1 November to 31 March. If your home stays cold, call 12345.",
         "published": "2024-10-25"},
    ],
    "queries": [
        {"id": "social-insurance", "title": "社保缴费查询", "title_en": "Social insurance lookup",
         "fields": [{"name": "id_number", "label": "身份证号", "label_en": "ID card number",
                     "type": "id_card"}]},
    ],
    "appointments": [
        {"id": "hukou", "title": "户籍业务预约", "title_en": "Household registration appointment",
         "location": "和平区政务服务中心", "location_en": "Heping district service centre",
         "slots": [{"id": "mon-0900", "start": "2024-12-02T09:00:00+08:00", "capacity": 1},
                   {"id": "mon-1000", "start": "2024-12-02T10:00:00+08:00", "capacity": 5}]},
    ],
}  # fmt: skip

INFO: dict[str, Any] = {
    "service_id": "info.heating",
    "version": 1,
    "kind": "info",
    "title": "供暖热线",
    "title_en": "Heating hotline",
    "body": "供暖问题请拨打 12345，24小时有人接听。",
    "body_en": "For heating problems call 12345, day and night.",
}


async def until(check: Callable[[], Any], what: str, timeout: float = 20.0, log: Child | None = None) -> Any:
    """Poll `check` (sync or async) until it returns something truthy; that value."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                value = check()
                if asyncio.iscoroutine(value):
                    value = await value
                if value:
                    return value
                await asyncio.sleep(0.05)
    except TimeoutError:
        tail = f"\n--- gateway log\n{log.log_tail(30)}" if log is not None else ""
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{tail}") from None


@dataclass
class Stand:
    cloud: CloudHarness
    proxy: FaultProxy
    broker: PrivateBroker
    state_dir: Path
    child: Child
    http: httpx.AsyncClient | None = None

    async def start(self) -> None:
        await self.child.start(timeout_s=30)
        url = (self.state_dir / "http.url").read_text().strip()
        token = (self.state_dir / "admin.token").read_text().strip()
        self.http = httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    async def stop(self, *, kill: bool = False) -> None:
        if self.http is not None:
            await self.http.aclose()
            self.http = None
        await (self.child.kill() if kill else self.child.stop())

    @property
    def box(self) -> httpx.AsyncClient:
        assert self.http is not None
        return self.http

    async def push(self, service: dict[str, Any], target: dict[str, Any] | None = None) -> dict[str, Any]:
        resp = await self.cloud.api.post(
            "/v1/services/push", json={"target": target or {"regions": ["2101"]}, "service": service}
        )
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    async def listed(self) -> set[str]:
        resp = await self.box.get("/api/v1/services")
        assert resp.status_code == 200, resp.text
        return {s["service_id"] for s in resp.json()}

    async def wait_listed(self, service_id: str, present: bool = True) -> None:
        async def check() -> bool:
            return (service_id in await self.listed()) == present

        await until(check, f"{service_id} {'listed' if present else 'gone'} on the box", log=self.child)

    async def order(self, *lines: tuple[str, int], service_id: str = "shop.fresh") -> dict[str, Any]:
        body = {"service_id": service_id, "lines": [{"item_id": i, "quantity": q} for i, q in lines]}
        resp = await self.box.post("/api/v1/orders", json=body)
        assert resp.status_code == 202, resp.text
        return dict(resp.json())

    async def wait_order(self, key: str, state: str, timeout: float = 20.0) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            resp = await self.box.get(f"/api/v1/orders/{key}")
            assert resp.status_code == 200, resp.text
            body = dict(resp.json())
            return body if body["state"] == state else None

        found: dict[str, Any] = await until(check, f"order {key} {state} on the box", timeout, self.child)
        return found

    async def cloud_orders(self) -> list[dict[str, Any]]:
        return list(await self.cloud.get("/v1/shop/orders", gateway_id=GW))


@pytest.fixture
async def stand(tmp_path: Path) -> AsyncIterator[Stand]:
    async with (
        running_cloud(tmp_path / "cloud", f"sqlite://{tmp_path / 'cloud.sqlite3'}") as cloud,
        PrivateBroker(workdir=tmp_path / "broker") as broker,
    ):
        upstream = cloud.cloud.broker
        assert upstream is not None
        prov = await cloud.provision(GW, household="H-SY-0042", region=REGION)
        state_dir = tmp_path / "gw" / "state"
        async with FaultProxy(upstream.host, upstream.port) as proxy:
            install_identity(prov, state_dir, mqtt_url=f"mqtts://127.0.0.1:{proxy.port}")
            env = {**os.environ, "GATEWAY_CLOUD__ACK_TIMEOUT_S": "3", "GATEWAY_CLOUD__RECONNECT_MAX_S": "0.5"}
            child = gateway_child(broker, state_dir, gateway_id=GW, env=env)
            st = Stand(cloud, proxy, broker, state_dir, child)
            await st.start()
            try:

                async def online() -> bool:
                    return bool((await cloud.get(f"/v1/gateways/{GW}"))["online"])

                await until(online, "the gateway online at the cloud", log=child)
                yield st
            finally:
                await st.stop()


# -- the whole flow ----------------------------------------------------------------------------------


async def test_push_order_pay_and_status_arrive_on_the_box(stand: Stand) -> None:
    pushed = await stand.push(SHOP)
    assert pushed["topics"] == ["bfy/v1/region/2101/service"]
    await stand.wait_listed("shop.fresh")
    listed = (await stand.box.get("/api/v1/services")).json()
    assert {"service_id": "shop.fresh", "kind": "shop", "title": "北方云鲜生", "title_en": "Beifang Fresh",
            "version": 1} in listed  # fmt: skip
    full = (await stand.box.get("/api/v1/services/shop.fresh")).json()
    assert full["items"][0]["image"] == PIXEL and full["items"][0]["price_fen"] == 6990

    placed = await stand.order(("milk-box", 2), ("rice-5kg", 1))
    assert placed["state"] == "pending" and placed["total_fen"] == 2 * 6990 + 5900
    confirmed = await stand.wait_order(placed["key"], "confirmed")
    assert confirmed["order_id"].startswith("SO")
    assert confirmed["pay_url"].startswith(
        stand.cloud.cloud.api_url + f"/v1/shop/pay/{confirmed['order_id']}"
    )
    assert confirmed["pay_qr"].startswith("data:image/svg+xml")
    page = await stand.cloud.anon.get(confirmed["pay_url"])  # where a phone scanning the QR code lands
    assert page.status_code == 200 and page.json()["total_fen"] == 2 * 6990 + 5900, page.text
    forged = await stand.cloud.anon.get(f"/v1/shop/pay/{confirmed['order_id']}?t=guess")
    assert forged.status_code == 404

    items = {i["item_id"]: i for i in await stand.cloud.get("/v1/shop/shop.fresh/items")}
    assert items["milk-box"]["stock"] == 98 and items["rice-5kg"]["stock"] == 49

    resp = await stand.cloud.api.post(f"/v1/shop/payments/{confirmed['order_id']}/callback")
    assert resp.status_code == 200 and resp.json()["state"] == "paid", resp.text
    paid = await stand.wait_order(placed["key"], "paid")
    assert paid["pay_qr"] is None  # nothing left to pay
    # A second callback (providers retry) changes nothing.
    again = await stand.cloud.api.post(f"/v1/shop/payments/{confirmed['order_id']}/callback")
    assert again.status_code == 200 and again.json()["state"] == "paid"

    for state in ("shipped", "delivered"):
        resp = await stand.cloud.api.post(
            f"/v1/shop/orders/{confirmed['order_id']}/status", json={"state": state}
        )
        assert resp.status_code == 200, resp.text
        await stand.wait_order(placed["key"], state)
    # Illegal: a delivered order cannot be cancelled.
    resp = await stand.cloud.api.post(
        f"/v1/shop/orders/{confirmed['order_id']}/status", json={"state": "cancelled"}
    )
    assert resp.status_code == 409 and resp.json()["detail"]["reason"] == "illegal_transition"
    orders = await stand.cloud_orders()
    assert [o["state"] for o in orders] == ["delivered"]


async def test_ordering_by_voice_and_asking_about_orders(stand: Stand) -> None:
    await stand.push(SHOP)
    await stand.push(GOV)
    await stand.wait_listed("gov.shenyang")
    async with Watcher(stand.broker, f"home/{GW}/event/voice_reply") as replies:

        async def say(text: str) -> str:
            n = len(replies.messages)
            mosquitto_pub(stand.broker, f"home/{GW}/voice/in", json.dumps({"text": text, "source": "tester"}))
            await replies.wait(lambda: len(replies.messages) > n, what=f"the answer to {text}")
            return str(json.loads(replies.messages[n].payload)["text"])

        answer = await say("我要买两箱牛奶")
        assert "辉山纯牛奶" in answer and "139.80" in answer and "扫" in answer, answer
        (order,) = await stand.cloud_orders()
        assert order["lines"] == [{"item_id": "milk-box", "quantity": 2, "price_fen": 6990}]
        assert order["state"] == "confirmed"  # paying stays on the TV: scanning the QR code
        mine = await say("查看我的订单")
        assert "辉山纯牛奶 250ml×24 2箱，待支付" in mine, mine
        # 奶 is in two names: the household is asked which; nothing is ordered.
        which = await say("我要买一箱奶")
        assert "辉山纯牛奶" in which and "原味酸奶" in which and "哪一种" in which, which
        assert "没有找到" in await say("我要买一箱矿泉水")
        assert len(await stand.cloud_orders()) == 1
        # An ID number is never asked for aloud: the TV's form is the way.
        assert "身份证号" in await say("查一下我的社保")


async def test_a_cancelled_order_gives_its_stock_back(stand: Stand) -> None:
    await stand.push(SHOP)
    await stand.wait_listed("shop.fresh")
    placed = await stand.order(("milk-box", 2))
    confirmed = await stand.wait_order(placed["key"], "confirmed")

    async def milk_stock() -> int:
        items = {i["item_id"]: i for i in await stand.cloud.get("/v1/shop/shop.fresh/items")}
        return int(items["milk-box"]["stock"])

    assert await milk_stock() == 98
    resp = await stand.cloud.api.post(
        f"/v1/shop/orders/{confirmed['order_id']}/status", json={"state": "cancelled"}
    )
    assert resp.status_code == 200, resp.text
    await stand.wait_order(placed["key"], "cancelled")
    assert await milk_stock() == 100
    # Cancelling again changes nothing (and gives nothing back twice).
    again = await stand.cloud.api.post(
        f"/v1/shop/orders/{confirmed['order_id']}/status", json={"state": "cancelled"}
    )
    assert again.status_code == 200 and await milk_stock() == 100


async def test_a_changed_price_is_shown_before_ordering_again(stand: Stand) -> None:
    await stand.push(SHOP)
    await stand.wait_listed("shop.fresh")
    resp = await stand.cloud.api.patch("/v1/shop/shop.fresh/items/milk-box", json={"price_fen": 7490})
    assert resp.status_code == 200, resp.text
    placed = await stand.order(("milk-box", 2))
    changed = await stand.wait_order(placed["key"], "price_changed")
    assert changed["prices"] == {"milk-box": 7490}
    assert changed["new_total_fen"] == 2 * 7490 and changed["total_fen"] == 2 * 6990
    items = {i["item_id"]: i for i in await stand.cloud.get("/v1/shop/shop.fresh/items")}
    assert items["milk-box"]["stock"] == 100  # not placed, nothing taken

    resp = await stand.box.post(f"/api/v1/orders/{placed['key']}/reorder")
    assert resp.status_code == 202, resp.text
    second = resp.json()
    assert second["key"] != placed["key"] and second["total_fen"] == 2 * 7490
    await stand.wait_order(second["key"], "confirmed")
    states = sorted(o["state"] for o in await stand.cloud_orders())
    assert states == ["confirmed", "price_changed"]


async def test_out_of_stock_is_rejected_and_takes_nothing(stand: Stand) -> None:
    await stand.push(SHOP)
    await stand.wait_listed("shop.fresh")
    placed = await stand.order(("yogurt", 4), ("milk-box", 1))  # 3 yogurts in stock
    rejected = await stand.wait_order(placed["key"], "rejected")
    assert rejected["reason"] == "out_of_stock"
    items = {i["item_id"]: i for i in await stand.cloud.get("/v1/shop/shop.fresh/items")}
    assert items["yogurt"]["stock"] == 3 and items["milk-box"]["stock"] == 100


# -- faults --------------------------------------------------------------------------------------------


async def test_an_order_placed_offline_waits_and_arrives_once(stand: Stand) -> None:
    await stand.push(SHOP)
    await stand.wait_listed("shop.fresh")
    stand.proxy.cut()

    async def offline() -> bool:
        return not (await stand.cloud.get(f"/v1/gateways/{GW}"))["online"]

    await until(offline, "the gateway offline at the cloud")
    placed = await stand.order(("milk-box", 1))
    assert placed["state"] == "pending"
    assert await stand.cloud_orders() == []
    stand.proxy.heal()
    await stand.wait_order(placed["key"], "confirmed")
    orders = await stand.cloud_orders()
    assert len(orders) == 1 and orders[0]["key"] == placed["key"]
    uplinks = await stand.cloud.get("/v1/uplinks", gateway_id=GW, type="order")
    assert [u["payload"]["key"] for u in uplinks] == [placed["key"]]  # sent once


async def test_kill_9_between_placed_and_confirmed_still_yields_exactly_one_order(stand: Stand) -> None:
    await stand.push(SHOP)
    await stand.wait_listed("shop.fresh")
    stand.proxy.cut()
    placed = await stand.order(("rice-5kg", 2))
    assert placed["state"] == "pending"
    await stand.stop(kill=True)
    stand.proxy.heal()
    await stand.start()
    confirmed = await stand.wait_order(placed["key"], "confirmed")
    orders = await stand.cloud_orders()
    assert [(o["key"], o["state"]) for o in orders] == [(placed["key"], "confirmed")]
    items = {i["item_id"]: i for i in await stand.cloud.get("/v1/shop/shop.fresh/items")}
    assert items["rice-5kg"]["stock"] == 48  # taken once
    # The restart sent it again (same key), and the cloud kept one order.
    uplinks = await stand.cloud.get("/v1/uplinks", gateway_id=GW, type="order")
    assert {u["payload"]["key"] for u in uplinks} == {placed["key"]}
    assert confirmed["order_id"] == orders[0]["id"]


async def test_withdrawn_service_disappears_and_stays_gone_after_a_restart(stand: Stand) -> None:
    await stand.push(SHOP)
    await stand.push(INFO)
    await stand.wait_listed("shop.fresh")
    await stand.wait_listed("info.heating")
    await stand.push({"service_id": "shop.fresh", "version": 2, "withdrawn": True})
    await stand.wait_listed("shop.fresh", present=False)
    assert (await stand.box.get("/api/v1/services/shop.fresh")).status_code == 404
    resp = await stand.box.post("/api/v1/orders", json={"service_id": "shop.fresh", "lines": [
        {"item_id": "milk-box", "quantity": 1}]})  # fmt: skip
    assert resp.status_code == 404
    # An older version pushed again is refused by the cloud and would be ignored by the box.
    resp = await stand.cloud.api.post(
        "/v1/services/push", json={"target": {"regions": ["2101"]}, "service": SHOP}
    )
    assert resp.status_code == 409 and resp.json()["detail"]["reason"] == "stale_version"
    await stand.stop()
    await stand.start()
    assert await stand.listed() == {"info.heating"}  # restored from the box's cache


async def test_the_cloud_refuses_invalid_definitions_with_reasons(stand: Stand) -> None:
    bad = {**SHOP, "items": [{**SHOP["items"][0], "price_fen": 19.9, "category": "toys"}]}
    resp = await stand.cloud.api.post("/v1/services/push", json={"target": {"all": True}, "service": bad})
    assert resp.status_code == 400, resp.text
    detail = resp.json()["detail"]
    assert detail["reason"] == "invalid_service"
    assert any("price_fen" in r for r in detail["reasons"])
    huge = {**SHOP, "items": [{**SHOP["items"][0], "image": "data:image/png;base64," + "A" * 40_000}]}
    resp = await stand.cloud.api.post("/v1/services/push", json={"target": {"all": True}, "service": huge})
    assert resp.status_code == 400 and "limit" in str(resp.json()["detail"]["reasons"])


# -- government services ----------------------------------------------------------------------------


async def test_government_query_notice_and_booking(stand: Stand) -> None:
    await stand.push(GOV)
    await stand.wait_listed("gov.shenyang")
    base = "/api/v1/services/gov.shenyang"

    resp = await stand.box.post(f"{base}/queries/social-insurance", json={"fields": {"id_number": ID_NUMBER}})
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["ok"] is True
    assert [line["label"] for line in answer["result"]["lines"]][:2] == ["参保状态", "累计缴费月数"]
    again = await stand.box.post(
        f"{base}/queries/social-insurance", json={"fields": {"id_number": ID_NUMBER}}
    )
    assert again.json() == answer  # deterministic reference data

    bad = await stand.box.post(
        f"{base}/queries/social-insurance", json={"fields": {"id_number": "110105194912310021"}}
    )
    assert bad.status_code == 400 and ID_NUMBER[:6] not in bad.text  # the reason, never the number

    # The government back end goes down: the household gets a clear answer, not a hang.
    resp = await stand.cloud.api.put("/v1/gov/gov.shenyang/backend", json={"online": False})
    assert resp.status_code == 204
    down = await stand.box.post(f"{base}/queries/social-insurance", json={"fields": {"id_number": ID_NUMBER}})
    assert down.status_code == 503 and down.json()["detail"]["reason"] == "service_unavailable"
    await stand.cloud.api.put("/v1/gov/gov.shenyang/backend", json={"online": True})

    # The ID number is nowhere on the box (state files, databases, WAL, log) nor in the cloud's store.
    for path in [*stand.state_dir.rglob("*"), stand.child.log_path]:
        if path.is_file():
            assert ID_NUMBER.encode() not in path.read_bytes(), path
    stored = await stand.cloud.get("/v1/uplinks", gateway_id=GW, type="gov.query")
    assert stored and all(u["payload"]["fields"] == {"id_number": "***"} for u in stored)

    # A read receipt goes up once.
    for _ in range(2):
        resp = await stand.box.post(f"{base}/notices/heating-2024/read")
        assert resp.status_code == 204
    assert (await stand.box.get(f"{base}/notices/read")).json() == ["heating-2024"]

    async def receipts() -> list[Any]:
        return list(await stand.cloud.get("/v1/uplinks", gateway_id=GW, type="notice.read"))

    found = await until(receipts, "the read receipt at the cloud")
    assert [r["payload"]["notice_id"] for r in found] == ["heating-2024"]

    # Bookings: the 09:00 slot holds one person.
    first = (await stand.box.post(f"{base}/appointments/hukou", json={"slot_id": "mon-0900"})).json()
    second = (await stand.box.post(f"{base}/appointments/hukou", json={"slot_id": "mon-0900"})).json()

    async def verdict(key: str) -> str | None:
        body = (await stand.box.get(f"{base}/bookings/{key}")).json()
        return None if body["state"] == "pending" else str(body["state"])

    assert await until(lambda: verdict(first["key"]), "first booking answered") == "booked"
    assert await until(lambda: verdict(second["key"]), "second booking answered") == "full"


# -- the cloud's idempotency, on both databases ------------------------------------------------------


@pytest.mark.parametrize("db_kind", DB_KINDS)
async def test_the_same_order_replayed_ten_times_is_one_order(db_kind: str, tmp_path: Path) -> None:
    async with database_url(db_kind, tmp_path) as url, running_cloud(tmp_path / "cloud", url) as cloud:
        prov = await cloud.provision("gw-replay", region=REGION)
        resp = await cloud.api.post(
            "/v1/services/push", json={"target": {"gateways": ["gw-replay"]}, "service": SHOP}
        )
        assert resp.status_code == 200, resp.text
        async with GatewayLink(prov, tmp_path / "links") as link:
            order = {
                "key": "k" * 24,
                "service_id": "shop.fresh",
                "version": 1,
                "lines": [{"item_id": "milk-box", "quantity": 3, "price_fen": 6990}],
                "total_fen": 3 * 6990,
            }
            first = link.send("order", order)
            # Ten replays: the same envelope redelivered, and the same order in new envelopes
            # (a resend after a restart), some in one burst (one group commit).
            sent = [first, link.publish(first)]
            sent += [link.send("order", order) for _ in range(8)]
            await link.wait_acked(*sent)

            def statuses() -> list[Any]:
                return [d.envelope.payload for d in link.downs("order.status") if d.verified]

            await link.wait(lambda: len(statuses()) >= 9, what="a status for every distinct envelope")
            assert {s["order_id"] for s in statuses()} == {statuses()[0]["order_id"]}
            assert {s["state"] for s in statuses()} == {"confirmed"}
        orders = await cloud.get("/v1/shop/orders", gateway_id="gw-replay")
        assert len(orders) == 1 and orders[0]["total_fen"] == 3 * 6990
        items = {i["item_id"]: i for i in await cloud.get("/v1/shop/shop.fresh/items")}
        assert items["milk-box"]["stock"] == 97  # taken once

        # Bookings are idempotent the same way.
        await cloud.api.post(
            "/v1/services/push", json={"target": {"gateways": ["gw-replay"]}, "service": GOV}
        )
        async with GatewayLink(prov, tmp_path / "links2") as link:
            booking = {
                "key": "b" * 24,
                "service_id": "gov.shenyang",
                "appointment_id": "hukou",
                "slot_id": "mon-0900",
            }
            sent = [link.send("appointment", booking) for _ in range(10)]
            await link.wait_acked(*sent)
        bookings = await cloud.get("/v1/gov/bookings", service_id="gov.shenyang")
        assert [(b["key"], b["state"]) for b in bookings] == [("b" * 24, "booked")]


async def test_statuses_only_move_an_order_forward(stand: Stand) -> None:
    """A status signed by the operator that would move an order back is ignored by the box."""
    await stand.push(SHOP)
    await stand.wait_listed("shop.fresh")
    placed = await stand.order(("milk-box", 1))
    confirmed = await stand.wait_order(placed["key"], "confirmed")
    await stand.cloud.api.post(f"/v1/shop/payments/{confirmed['order_id']}/callback")
    await stand.wait_order(placed["key"], "paid")
    service = stand.cloud.cloud.service
    assert service is not None
    stale = new_envelope("order.status", {"key": placed["key"], "state": "confirmed"}, gateway_id=GW)
    await service.publish_signed(f"bfy/v1/gw/{GW}/down", stale)
    resp = await stand.cloud.api.post(
        f"/v1/shop/orders/{confirmed['order_id']}/status", json={"state": "shipped"}
    )
    assert resp.status_code == 200
    await stand.wait_order(placed["key"], "shipped")  # after the stale one: still forward only


# -- the TV menu, in Chromium, with the remote's keys -------------------------------------------------

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture
async def page(stand: Stand) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=15_000)
    token = (stand.state_dir / "admin.token").read_text().strip()
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            context = await chromium.new_context(
                viewport={"width": 1280, "height": 720}, locale="zh-CN", timezone_id="Asia/Shanghai"
            )
            await context.add_init_script(f"localStorage.setItem('bfy.token', {token!r})")
            pg = await context.new_page()
            errors: list[str] = []
            pg.on("pageerror", lambda exc: errors.append(str(exc)))
            await pg.goto(str(stand.box.base_url))
            yield pg
            assert not errors, errors
        finally:
            await chromium.close()


async def focus_on(page: Any, text: str, key: str, limit: int = 12) -> None:
    from playwright.async_api import expect

    focused = page.locator(".is-focused")
    for _ in range(limit):
        if text in await focused.inner_text():
            return
        await page.keyboard.press(key)
    await expect(focused).to_contain_text(text)


async def open_services_tab(page: Any) -> None:
    from playwright.async_api import expect

    await expect(page.locator(".is-focused")).to_have_count(1)
    await focus_on(page, "首页", "ArrowUp")
    await focus_on(page, "服务", "ArrowRight")
    await page.keyboard.press("ArrowDown")


async def test_the_menu_renders_a_pushed_shop_and_a_government_service_with_the_remote(
    stand: Stand, page: Any
) -> None:
    from playwright.async_api import expect

    await stand.push(SHOP)
    await stand.push(GOV)
    await stand.wait_listed("shop.fresh")
    await stand.wait_listed("gov.shenyang")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    await open_services_tab(page)
    await expect(page.locator(".svc")).to_have_count(2)
    await focus_on(page, "北方云鲜生", "ArrowRight")
    await page.keyboard.press("Enter")
    await expect(page.locator("#svc-title")).to_have_text("北方云鲜生")
    await expect(page.locator(".is-focused")).to_contain_text("乳品")
    await page.keyboard.press("ArrowRight")
    await expect(page.locator(".is-focused")).to_contain_text("辉山纯牛奶")
    await expect(page.locator(".is-focused")).to_contain_text("¥69.90")
    await page.screenshot(path=str(SCREENSHOTS / "services-shop-1280x720.png"))

    await page.keyboard.press("Enter")
    await page.keyboard.press("ArrowRight")
    await expect(page.locator("#qty-total")).to_have_text("¥139.80")
    await page.keyboard.press("ArrowDown")
    await expect(page.locator(".is-focused")).to_have_text("确认下单")
    await page.keyboard.press("Enter")
    await expect(page.locator("#pay-qr")).to_be_visible()
    await expect(page.locator("#order-state")).to_have_text("请用手机扫码支付")
    await page.screenshot(path=str(SCREENSHOTS / "services-order-qr-1280x720.png"))

    orders = await stand.cloud_orders()
    assert [(o["state"], o["total_fen"]) for o in orders] == [("confirmed", 13980)]
    resp = await stand.cloud.api.post(f"/v1/shop/payments/{orders[0]['id']}/callback")
    assert resp.status_code == 200
    await expect(page.locator("#order-state")).to_have_text("已付款，等待发货")
    await expect(page.locator("#pay-qr")).to_have_count(0)

    # Back to the list, then the government service: read a notice, then a look-up typed
    # with the number keys (and the X key of the ID number).
    for _ in range(2):
        await page.keyboard.press("Escape")
    await expect(page.locator(".svc.is-focused")).to_contain_text("北方云鲜生")
    await focus_on(page, "沈阳政务服务", "ArrowRight")
    await page.keyboard.press("Enter")
    await expect(page.locator(".is-focused")).to_contain_text("供暖季开始")
    await page.screenshot(path=str(SCREENSHOTS / "services-gov-1280x720.png"))
    await page.keyboard.press("Enter")
    await expect(page.locator("#svc-notice")).to_contain_text("12345")
    await page.keyboard.press("Enter")
    await expect(page.locator(".is-focused")).to_contain_text("✓")

    async def receipt() -> list[Any]:
        return list(await stand.cloud.get("/v1/uplinks", gateway_id=GW, type="notice.read"))

    await until(receipt, "the read receipt at the cloud")

    await focus_on(page, "社保缴费查询", "ArrowRight")
    await page.keyboard.press("Enter")
    await expect(page.locator(".is-focused")).to_have_class(re.compile(r"\binput\b"))
    for digit in ID_NUMBER[:17]:
        await page.keyboard.press(digit)
    await page.keyboard.press("ArrowRight")
    await expect(page.locator(".is-focused")).to_have_text("输入 X")
    await page.keyboard.press("Enter")
    await expect(page.locator(".input .typed")).to_have_text(ID_NUMBER)
    await expect(page.locator(".is-focused")).to_have_text("查询")
    await page.keyboard.press("Enter")
    await expect(page.locator("#svc-result")).to_contain_text("累计缴费月数")
    await page.screenshot(path=str(SCREENSHOTS / "services-gov-query-1280x720.png"))
    # Back on the form, nothing of what was typed is left on the page.
    await page.keyboard.press("Escape")
    await expect(page.locator(".input .typed")).not_to_contain_text("1101")
