"""The reference cloud's MQTT side over real mutual TLS, on SQLite and PostgreSQL.

Provisioned gateways connect with their certificates, publish uplinks and get signed acks;
the broker ACL keeps each gateway on its own topics and its own region's; commands, service
pushes and key rotation go out signed.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cloud_bridge.ca import cert_info
from cloud_bridge.protocol import Envelope, SignatureError, TrustedKey, TrustStore, topics
from gateway.errors import BrokerError
from gateway.mqtt import MqttClient
from tests.integration.cloud_harness import (
    DB_KINDS,
    CloudHarness,
    GatewayLink,
    database_url,
    free_port,
    reply_to,
    running_cloud,
)


@pytest.fixture(params=DB_KINDS)
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with database_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture
async def cloud(db_url: str, tmp_path: Path) -> AsyncIterator[CloudHarness]:
    async with running_cloud(tmp_path / "cloud", db_url) as harness:
        yield harness


async def test_provisioned_gateway_uplinks_are_stored_acked_and_shadowed(
    cloud: CloudHarness, tmp_path: Path
) -> None:
    prov = await cloud.provision("gw-a", household="沈阳-和平-001", region="210102")
    info = cert_info(prov.certificate_pem.encode())
    assert info.common_name == "gw-a"
    assert info.issuer == "Beifang Cloud Gateway CA"
    assert [k.kid for k in prov.trust] == [cloud.cloud.service.keys.current.kid]  # type: ignore[union-attr]
    assert prov.mqtt_url == cloud.cloud.mqtt_url and prov.api_url == cloud.cloud.api_url

    async with GatewayLink(prov, tmp_path) as gw:
        hello = gw.send(
            "hello", {"version": "1.4.2", "region": "210102", "household": prov.household, "devices": 2}
        )
        tele = gw.send(
            "telemetry",
            {
                "devices": {
                    "plug-1": {
                        "info": {"name": "客厅插座", "kind": "plug"},
                        "state": {"on": True, "power": 3.5},
                        "online": True,
                    },
                    "tv-1": {"info": {"name": "电视", "kind": "tv"}, "state": {"volume": 20}, "online": True},
                }
            },
        )
        event = gw.send("event", {"kind": "motion", "device": "sensor-1", "seq": 1, "data": {"motion": True}})
        await gw.wait_acked(hello, tele, event)
        tele2 = gw.send("telemetry", {"devices": {"plug-1": {"state": {"power": 7.0}}}, "removed": ["tv-1"]})
        receipt = gw.send("receipt", {"alert_id": "a-1", "device": "tv-1", "status": "displayed"})
        security = gw.send(
            "security",
            {"reason": "bad_signature", "type": "alert", "id": "x-1", "kid": "ed25519:00", "detail": "?"},
        )
        custom = gw.send("custom.thing", {"anything": [1, 2, 3]})
        await gw.wait_acked(tele2, receipt, security, custom)

        acks = gw.downs("ack")
        assert acks and all(d.verified for d in acks), [d.error for d in acks]
        assert all(d.envelope.gateway_id == "gw-a" and d.topic == topics.down("gw-a") for d in acks)
        # Signed means signed: a store without the cloud's key refuses the very same ack.
        with pytest.raises(SignatureError):
            TrustStore().verify(acks[0].envelope)

        g = await cloud.get("/v1/gateways/gw-a")
        assert g["online"] is True
        assert g["version"] == "1.4.2"
        assert (g["household"], g["region"], g["devices"]) == ("沈阳-和平-001", "210102", 1)
        assert g["cert_not_after"].startswith(info.not_after.strftime("%Y-%m-%d"))
        devices = await cloud.get("/v1/gateways/gw-a/devices")
        assert [d["id"] for d in devices] == ["plug-1"]
        assert devices[0]["state"] == {"on": True, "power": 7.0}
        assert devices[0]["info"] == {"name": "客厅插座", "kind": "plug"}
        assert devices[0]["online"] is True

        stored = await cloud.get("/v1/uplinks", gateway_id="gw-a")
        assert [u["id"] for u in stored] == [
            hello.id,
            tele.id,
            event.id,
            tele2.id,
            receipt.id,
            security.id,
            custom.id,
        ]
        assert [u["type"] for u in stored][:4] == ["hello", "telemetry", "event", "telemetry"]
        assert stored[4]["device"] == "tv-1" and stored[6]["payload"] == {"anything": [1, 2, 3]}
        assert [u["id"] for u in await cloud.get("/v1/uplinks", type="receipt")] == [receipt.id]
        newest = await cloud.get("/v1/uplinks", gateway_id="gw-a", order="desc", limit=2)
        assert [u["id"] for u in newest] == [custom.id, security.id]
        assert [u["id"] for u in await cloud.get("/v1/uplinks", after=stored[5]["n"])] == [custom.id]
        reported = await cloud.get("/v1/security-events")
        assert [(e["source"], e["reason"], e["gateway_id"], e["envelope_id"]) for e in reported] == [
            ("gateway", "bad_signature", "gw-a", security.id)
        ]
        assert '"kid":"ed25519:00"' in reported[0]["detail"]
        assert stored[2]["device"] == "sensor-1" and stored[2]["seq"] == 1
        assert stored[2]["payload"]["data"] == {"motion": True}
        assert stored[0]["ts"] == hello.ts

        assert [g["id"] for g in await cloud.get("/v1/gateways", region="21", online="true")] == ["gw-a"]
        assert [g["id"] for g in await cloud.get("/v1/gateways", region="2101")] == ["gw-a"]
        assert await cloud.get("/v1/gateways", region="2102") == []
        assert await cloud.get("/v1/gateways", online="false") == []

    # Offline after a clean disconnect. The same box reconnecting later (without announcing
    # itself) acts as a marker: once its uplink is acked, the earlier `offline` is stored too.
    async with GatewayLink(prov, tmp_path / "again", announce=False) as gw:
        await gw.wait_acked(gw.send("event", {"kind": "marker"}))
    assert (await cloud.get("/v1/gateways/gw-a"))["online"] is False


async def test_duplicates_are_stored_once_in_order_and_always_acked(db_url: str, tmp_path: Path) -> None:
    port = free_port()  # the same broker port across the cloud's restart
    data_dir = tmp_path / "cloud"
    async with running_cloud(data_dir, db_url, mqtt_port=port) as cloud:
        prov = await cloud.provision("gw-dup")
        async with GatewayLink(prov, tmp_path) as gw:
            first = gw.envelope("event", {"kind": "button", "device": "btn-1", "seq": 1})
            second = gw.envelope("event", {"kind": "button", "device": "btn-1", "seq": 2})
            third = gw.envelope("event", {"kind": "button", "device": "btn-1", "seq": 3})
            for env in (first, first, second, first, second, third, third):
                gw.publish(env)
            await gw.wait(lambda: gw.seen.acked.get(first.id, 0) >= 3, what="3 acks of the first")
            await gw.wait(lambda: gw.seen.acked.get(third.id, 0) >= 2, what="2 acks of the third")
            assert gw.seen.acked[second.id] >= 2
    # Across a restart of the cloud (and its broker): still de-duplicated, still acked.
    async with running_cloud(data_dir, db_url, mqtt_port=port) as cloud:
        async with GatewayLink(prov, tmp_path / "2") as gw:
            gw.publish(first)
            fourth = gw.send("event", {"kind": "button", "device": "btn-1", "seq": 4})
            await gw.wait_acked(first, fourth)
        stored = await cloud.get("/v1/uplinks", gateway_id="gw-dup", device="btn-1")
        assert [u["seq"] for u in stored] == [1, 2, 3, 4]
        assert [u["id"] for u in stored] == [first.id, second.id, third.id, fourth.id]


async def test_many_uplinks_are_group_committed_and_all_acked(cloud: CloudHarness, tmp_path: Path) -> None:
    prov = await cloud.provision("gw-bulk")
    count = 5000
    async with GatewayLink(prov, tmp_path) as gw:
        envs = [gw.send("event", {"kind": "meter", "device": f"m-{i % 7}", "seq": i}) for i in range(count)]
        await gw.wait_acked(*envs, timeout=60)
        acks = gw.downs("ack")
        assert all(d.verified for d in acks)
        assert max(len(d.envelope.payload["ids"]) for d in acks) <= 1000
        # Batched: far fewer ack messages than uplinks.
        assert len(acks) < count / 2
    stored = await cloud.get("/v1/uplinks", gateway_id="gw-bulk", limit=count + 10)
    assert len(stored) == count
    assert len({u["id"] for u in stored}) == count
    for device in range(7):
        seqs = [u["seq"] for u in stored if u["device"] == f"m-{device}"]
        assert seqs == sorted(seqs)


async def test_poison_uplinks_are_refused_alone(cloud: CloudHarness, tmp_path: Path) -> None:
    """Bad input from a peer is recorded and dropped; it never costs the good uplinks beside it."""
    prov = await cloud.provision("gw-p")
    async with GatewayLink(prov, tmp_path) as gw:
        good = gw.envelope("event", {"kind": "ok", "device": "d", "seq": 1})
        nul = gw.envelope("event", {"kind": "nul\x00byte", "device": "d", "seq": 2})
        huge = gw.envelope("event", {"kind": "huge", "value": 2**70})
        gw.client.publish(topics.up("gw-p"), b"{not json", qos=1)
        gw.client.publish(topics.up("gw-p"), b'{"v": 1, "id": "abcdefgh-1", "type": "event"}', qos=1)
        for env in (good, nul, huge):
            gw.publish(env)
        last = gw.send("event", {"kind": "ok", "device": "d", "seq": 3})
        # The huge number can never be stored; it is acked anyway, or the outbox would resend it forever.
        await gw.wait_acked(good, nul, huge, last)
    stored = await cloud.get("/v1/uplinks", gateway_id="gw-p")
    assert [u["id"] for u in stored] == [good.id, nul.id, last.id]
    assert stored[1]["payload"]["kind"] == "nul\ufffdbyte"  # PostgreSQL's JSON cannot hold NUL
    events = await cloud.get("/v1/security-events", gateway_id="gw-p")
    assert sorted(e["reason"] for e in events) == ["malformed", "malformed", "unstorable"]
    assert [e["envelope_id"] for e in events if e["reason"] == "unstorable"] == [huge.id]


async def test_acl_confines_gateways_to_their_topics_and_regions(cloud: CloudHarness, tmp_path: Path) -> None:
    a = await cloud.provision("gw-a", region="210102")
    async with GatewayLink(a, tmp_path) as gw_a:
        await gw_a.wait_acked(gw_a.send("event", {"kind": "before"}))
        # Provisioned while the broker runs and A is connected: the ACL is reloaded, not restarted.
        b = await cloud.provision("gw-b", household="H-2", region="2102")
        spy = ("bfy/#", topics.down("gw-a"), "bfy/v1/region/2101/#", "bfy/v1/region/210102/#")
        async with GatewayLink(b, tmp_path, extra_filters=spy) as gw_b:
            forged_topic = gw_b.publish(
                gw_b.envelope("event", {"kind": "forged"}, gateway_id="gw-a"), topic=topics.up("gw-a")
            )
            forged_claim = gw_b.publish(gw_b.envelope("event", {"kind": "forged"}, gateway_id="gw-a"))
            gw_b.client.publish(topics.presence("gw-a"), b"offline", qos=1, retain=True)
            marker = gw_b.send("event", {"kind": "marker"})
            await gw_b.wait_acked(marker)
            # A, connected before the reload, still publishes.
            await gw_a.wait_acked(gw_a.send("event", {"kind": "after"}))

            ids = {u["id"] for u in await cloud.get("/v1/uplinks", limit=1000)}
            assert marker.id in ids
            assert forged_topic.id not in ids and forged_claim.id not in ids
            assert forged_claim.id not in gw_b.seen.acked
            assert (await cloud.get("/v1/gateways/gw-a"))["online"] is True
            events = await cloud.get("/v1/security-events", gateway_id="gw-b")
            assert [(e["reason"], e["source"], e["envelope_id"]) for e in events] == [
                ("gateway_id_mismatch", "cloud", forged_claim.id)
            ]

            # Service pushes: the broker fans out by region prefix.
            resp = await cloud.api.post(
                "/v1/services/push",
                json={
                    "target": {"regions": ["2101"]},
                    "service": {
                        "service_id": "mall",
                        "version": 3,
                        "kind": "info",
                        "title": "双十一",
                        "body": "好物",
                    },
                },
            )
            assert resp.status_code == 200, resp.text
            push_2101 = resp.json()
            assert push_2101["topics"] == [topics.region("2101", "service")]
            got = await gw_a.wait_down(lambda d: d.envelope.id == push_2101["id"], what="the 2101 push")
            assert got.verified and got.topic == topics.region("2101", "service")
            assert got.envelope.type == "service"
            assert got.envelope.payload == {
                **got.envelope.payload,
                "service_id": "mall",
                "version": 3,
                "title": "双十一",
            }

            resp = await cloud.api.post(
                "/v1/services/push",
                json={
                    "target": {"regions": ["2102"]},
                    "service": {
                        "service_id": "gov",
                        "version": 1,
                        "kind": "info",
                        "title": "政务",
                        "body": "通知",
                    },
                },
            )
            push_2102 = resp.json()
            await gw_b.wait_down(lambda d: d.envelope.id == push_2102["id"], what="the 2102 push")
            resp = await cloud.api.post(
                "/v1/services/push",
                json={
                    "target": {"gateways": ["gw-b"]},
                    "service": {
                        "service_id": "one",
                        "version": 1,
                        "kind": "info",
                        "title": "一",
                        "body": "通知",
                    },
                },
            )
            push_b = resp.json()
            assert push_b["topics"] == [topics.down("gw-b")]
            await gw_b.wait_down(lambda d: d.envelope.id == push_b["id"], what="the push to gw-b")
            resp = await cloud.api.post(
                "/v1/services/push",
                json={
                    "target": {"all": True},
                    "service": {
                        "service_id": "all",
                        "version": 1,
                        "kind": "info",
                        "title": "全部",
                        "body": "通知",
                    },
                },
            )
            push_all = resp.json()
            assert push_all["topics"] == [topics.ALL_SERVICE]
            for link in (gw_a, gw_b):
                await link.wait_down(lambda d: d.envelope.id == push_all["id"], what="the push to all")
            # Everything B could read arrived after the 2101 push was delivered to A: B saw none
            # of A's topics and not the other region.
            assert push_2101["id"] not in {d.envelope.id for d in gw_b.seen.downs}
            assert push_b["id"] not in {d.envelope.id for d in gw_a.seen.downs}
            assert not [m.topic for m in gw_b.seen.messages if "/gw-a/" in m.topic or "/2101/" in m.topic]
            assert [p["id"] for p in await cloud.get("/v1/services")] == [
                push_all["id"],
                push_b["id"],
                push_2102["id"],
                push_2101["id"],
            ]


async def test_broker_takes_only_certificates_from_the_cloud_ca(cloud: CloudHarness, tmp_path: Path) -> None:
    from cloud_bridge.ca import CertificateAuthority

    rogue = CertificateAuthority.create(tmp_path / "rogue")
    cert_pem, key_pem = rogue.issue_client("gw-a")
    (tmp_path / "rogue" / "c.pem").write_bytes(cert_pem)
    (tmp_path / "rogue" / "k.pem").write_bytes(key_pem)
    ctx = ssl.create_default_context(cafile=str(tmp_path / "cloud" / "ca" / "ca.pem"))
    ctx.load_cert_chain(str(tmp_path / "rogue" / "c.pem"), str(tmp_path / "rogue" / "k.pem"))
    plain = ssl.create_default_context(cafile=str(tmp_path / "cloud" / "ca" / "ca.pem"))
    assert cloud.cloud.broker is not None
    for tls in (ctx, plain):
        client = MqttClient(
            host="127.0.0.1",
            port=cloud.cloud.broker.port,
            client_id="intruder",
            tls=tls,
            connect_timeout_s=2,
            name="intruder",
        )
        task = asyncio.create_task(client.run())
        try:
            with pytest.raises(BrokerError):
                await client.wait_connected(1.0)
        finally:
            await client.close()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


async def test_commands_get_their_correlated_replies_or_time_out(cloud: CloudHarness, tmp_path: Path) -> None:
    prov = await cloud.provision("gw-cmd")
    received: list[Envelope] = []

    def answer(link: GatewayLink, command: Envelope) -> None:
        received.append(command)
        name = command.payload["name"]
        if name == "diagnostics":
            reply_to(link, command, ok=True, result={"uptime_s": 42, "devices": 3})
        elif name == "set_config":
            reply_to(link, command, ok=False, error={"reason": "bad_key", "message": "no such setting"})
        # reboot: never answered

    async with GatewayLink(prov, tmp_path, on_command=answer) as gw:
        ok, err, silent = await asyncio.gather(
            cloud.api.post(
                "/v1/gateways/gw-cmd/commands", json={"name": "diagnostics", "args": {"verbose": True}}
            ),
            cloud.api.post("/v1/gateways/gw-cmd/commands", json={"name": "set_config", "args": {"x": 1}}),
            cloud.api.post("/v1/gateways/gw-cmd/commands", json={"name": "reboot", "timeout_s": 0.5}),
        )
        assert ok.status_code == 200, ok.text
        assert ok.json()["status"] == "ok" and ok.json()["result"] == {"uptime_s": 42, "devices": 3}
        assert "error" not in ok.json()
        assert err.json()["status"] == "error"
        assert err.json()["error"] == {"reason": "bad_key", "message": "no such setting"}
        assert silent.json() == {"command_id": silent.json()["command_id"], "status": "timeout"}

        by_name = {c.payload["name"]: c for c in received}
        assert by_name["diagnostics"].payload == {"name": "diagnostics", "args": {"verbose": True}}
        assert by_name["diagnostics"].id == ok.json()["command_id"]
        assert all(c.gateway_id == "gw-cmd" for c in received)
        assert all(d.verified for d in gw.downs("command"))

        # A late reply still lands in the record.
        reboot = by_name["reboot"]
        late = reply_to(gw, reboot, ok=True, result={"rebooting": True})
        await gw.wait_acked(late)
    record = await cloud.get(f"/v1/commands/{ok.json()['command_id']}")
    assert record["status"] == "ok" and record["args"] == {"verbose": True} and record["replied_at"]
    assert (await cloud.get(f"/v1/commands/{silent.json()['command_id']}"))["status"] == "ok"
    assert (await cloud.get(f"/v1/commands/{err.json()['command_id']}"))["status"] == "error"
    assert len(await cloud.get("/v1/commands", gateway_id="gw-cmd")) == 3
    replies = await cloud.get("/v1/uplinks", gateway_id="gw-cmd", type="reply")
    assert len(replies) == 3


async def test_key_rotation_is_announced_with_the_old_key(cloud: CloudHarness, tmp_path: Path) -> None:
    a = await cloud.provision("gw-a")
    b = await cloud.provision("gw-b", region="2102")  # offline during the rotation
    old_kid = a.trust[0].kid
    async with GatewayLink(a, tmp_path) as gw:
        await gw.wait_acked(
            gw.send("hello", {"version": "1", "region": a.region, "household": a.household, "devices": 0})
        )
        resp = await cloud.api.post("/v1/keys/rotate")
        assert resp.status_code == 200, resp.text
        rotation = resp.json()
        assert rotation["previous_kid"] == old_kid and rotation["kid"] != old_kid
        assert rotation["notified"] == 2

        update = await gw.wait_down(lambda d: d.envelope.type == "trust.update", what="trust.update")
        assert update.verified, update.error  # by the gateway's provisioned store: the old key
        assert update.envelope.kid == old_kid and update.topic == topics.down("gw-a")
        added = [TrustedKey.model_validate(k) for k in update.envelope.payload["add"]]
        assert [k.kid for k in added] == [rotation["kid"]]
        assert update.envelope.payload["remove"] == []

        # From now on the cloud signs with the new key: the old store alone refuses it.
        old_store = TrustStore(a.trust)
        for key in added:
            gw.trust.add(key)
        n_acks = len(gw.downs("ack"))
        await gw.wait_acked(gw.send("event", {"kind": "after-rotation"}))
        new_ack = gw.downs("ack")[n_acks].envelope
        assert new_ack.kid == rotation["kid"]
        gw.trust.verify(new_ack)
        with pytest.raises(SignatureError) as refused:
            old_store.verify(new_ack)
        assert refused.value.reason == "unknown_key"

    keys = await cloud.get("/v1/keys")
    assert [(k["kid"], k["current"]) for k in keys] == [(old_kid, False), (rotation["kid"], True)]
    assert oct((tmp_path / "cloud" / "signing" / "2.key").stat().st_mode & 0o777) == "0o600"
    c = await cloud.provision("gw-c")
    assert [k.kid for k in c.trust] == [old_kid, rotation["kid"]]

    # B missed the rotation; its next hello brings the key, signed with the key B knows.
    async with GatewayLink(b, tmp_path) as gw_b:
        gw_b.send("hello", {"version": "1", "region": b.region, "household": b.household, "devices": 0})
        catch_up = await gw_b.wait_down(
            lambda d: d.envelope.type == "trust.update", what="catch-up trust.update"
        )
        assert catch_up.verified and catch_up.envelope.kid == old_kid
        assert [k["kid"] for k in catch_up.envelope.payload["add"]] == [rotation["kid"]]
        # Until then B could not check the cloud's acks (signed with the new key): it resends.
        assert [d.error for d in gw_b.downs("ack")] == ["unknown_key"]
        for key in catch_up.envelope.payload["add"]:
            gw_b.trust.add(TrustedKey.model_validate(key))
        # Told once: another hello brings no second update. Whatever that hello triggers is
        # published before the next uplink's ack.
        gw_b.send("hello", {"version": "1", "region": b.region, "household": b.household, "devices": 0})
        await gw_b.wait_acked(gw_b.send("event", {"kind": "marker"}))
        assert len(gw_b.downs("trust.update")) == 1
