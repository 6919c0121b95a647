"""`cloud serve` as a real process, and the `cloud` command line against it.

Ready line, SIGTERM, restart on the same data directory (CA, tokens, keys and database kept),
and an external broker (`--mqtt mqtts://...`). On SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from cloud_bridge.ca import make_csr
from cloud_bridge.cloud.broker import BrokerTls, CloudBroker
from cloud_bridge.protocol import TrustedKey
from gateway.procs import Child
from tests.integration.cloud_harness import DB_KINDS, GatewayLink, Provisioned, database_url, free_port


@pytest.fixture(params=DB_KINDS)
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with database_url(request.param, tmp_path) as url:
        yield url


def _cli(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CLOUD_")}
    return subprocess.run(
        [sys.executable, "-m", "cloud_bridge.cli", "--data-dir", str(data_dir), *args],
        capture_output=True, text=True, timeout=60, env={**base, "COLUMNS": "200", **(env or {})},
    )  # fmt: skip


async def cli(
    data_dir: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(_cli, data_dir, *args, env=env)


def _serve(data_dir: Path, db_url: str, log: Path, *extra: str) -> Child:
    argv = [sys.executable, "-m", "cloud_bridge.cli", "--data-dir", str(data_dir), "serve"]
    return Child(
        "cloud",
        [*argv, "--http", "127.0.0.1:0", "--db", db_url, *extra],
        log_path=log,
        ready=r"cloud ready: ",
    )


async def _provision(api_url: str, code: str, gateway_id: str) -> Provisioned:
    key_pem, csr_pem = make_csr(gateway_id)
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as http:
        resp = await http.post(
            "/v1/provision", json={"code": code, "gateway_id": gateway_id, "csr_pem": csr_pem.decode()}
        )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    return Provisioned(
        gateway_id=gateway_id,
        household=body["household"],
        region=body["region"],
        key_pem=key_pem,
        certificate_pem=body["certificate_pem"],
        ca_pem=body["ca_pem"],
        trust=[TrustedKey.model_validate(k) for k in body["trust"]],
        mqtt_url=body["mqtt_url"],
        api_url=body["api_url"],
    )


async def test_serve_cli_sigterm_and_restart(db_url: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    log = tmp_path / "cloud.log"
    child = _serve(data, db_url, log, "--mqtt-port", str(port))
    await child.start(timeout_s=30)
    try:
        text = log.read_text()
        assert text.count("cloud ready:") == 1, text
        info = json.loads((data / "cloud.json").read_text())
        assert info["mqtt_url"] == f"mqtts://127.0.0.1:{port}"
        assert info["api_url"] in text and info["mqtt_url"] in text
        async with httpx.AsyncClient(base_url=info["api_url"], timeout=10) as http:
            assert (await http.get("/v1/health")).json()["ok"] is True

        out = await cli(
            data, "workorder", "create", "--household", "沈阳-001", "--region", "210102", "--json"
        )
        assert out.returncode == 0, out.stderr
        order = json.loads(out.stdout)
        assert order["household"] == "沈阳-001" and order["region"] == "210102"
        out = await cli(
            data, "workorder", "create", "--household", "沈阳-002", "--region", "2102", "--ttl", "600"
        )
        assert out.returncode == 0, out.stderr
        second_code = out.stdout.splitlines()[0]
        assert re.fullmatch(r"[2-9A-Z]{4}-[2-9A-Z]{4}-[2-9A-Z]{2}", second_code)
        out = await cli(data, "workorder", "create", "--household", "x", "--region", "123")
        assert out.returncode == 1 and "invalid_request" in out.stderr and "region" in out.stderr

        prov = await _provision(info["api_url"], order["code"], "gw-s")
        out = await cli(data, "gateways")
        assert out.returncode == 0 and "gw-s" in out.stdout and "沈阳-001" in out.stdout, out.stdout
        out = await cli(data, "gateways", "--region", "2102", "--json")
        assert json.loads(out.stdout) == []

        service = tmp_path / "mall.json"
        service.write_text(
            json.dumps(
                {"service_id": "mall", "version": 7, "kind": "info", "title": "年货节", "body": "年货"},
                ensure_ascii=False,
            )
        )
        out = await cli(data, "push", "--region", "2101", str(service))
        assert out.returncode == 0, out.stderr
        assert "bfy/v1/region/2101/service" in out.stdout
        out = await cli(data, "push", "--gateway", "gw-s", str(service), "--json")
        assert json.loads(out.stdout)["topics"] == ["bfy/v1/gw/gw-s/down"]

        token = (data / "tokens" / "operator.token").read_text().strip()
        nowhere = tmp_path / "nowhere"
        # Independent of each other: run them side by side.
        timeout, unknown, shown, wrong, unreachable, lost, by_env = await asyncio.gather(
            cli(data, "command", "gw-s", "diagnostics", "--arg", "verbose=true", "--timeout", "0.3"),
            cli(data, "command", "gw-none", "reboot"),
            cli(data, "token", "show", "operator"),
            cli(data, "gateways", "--token", "wrong"),
            cli(data, "gateways", "--cloud", "http://127.0.0.1:9"),
            cli(nowhere, "gateways"),
            cli(nowhere, "gateways", env={"CLOUD_URL": info["api_url"], "CLOUD_TOKEN": token}),
        )
        assert timeout.returncode == 1 and json.loads(timeout.stdout)["status"] == "timeout"
        assert unknown.returncode == 1 and "unknown_gateway" in unknown.stderr
        assert shown.stdout.strip() == token
        assert wrong.returncode == 1 and "refused the token" in wrong.stderr
        assert unreachable.returncode == 1 and "cannot reach the cloud" in unreachable.stderr
        assert lost.returncode == 1 and "cloud serve" in lost.stderr
        assert by_env.returncode == 0 and "gw-s" in by_env.stdout

        async with GatewayLink(prov, tmp_path) as gw:
            await gw.wait_acked(gw.send("event", {"kind": "before-restart", "device": "d", "seq": 1}))
        # gw-s is offline now: it learns the new key at its next hello.
        out = await cli(data, "keys", "rotate")
        assert out.returncode == 0 and out.stdout.startswith("signing with ed25519:"), out.stderr

        assert child.pid is not None
        async with asyncio.timeout(6):
            code = await child.stop(timeout_s=5.0)
        assert code == 0, child.log_tail()
        assert "stopped" in child.log_tail()
    finally:
        await child.kill()

    ca_pem = (data / "ca" / "ca.pem").read_text()
    # Restart against an external broker (`--mqtt`), here one the test runs with the cloud's files.
    tls = BrokerTls(data / "ca" / "ca.pem", data / "tls" / "server.pem", data / "tls" / "server.key")
    async with CloudBroker(tls=tls, acl_file=data / "mosquitto.acl", workdir=tmp_path / "external") as broker:
        child = _serve(data, db_url, log, "--mqtt", broker.url)
        await child.start(timeout_s=30)
        try:
            text = log.read_text()
            assert text.count("cloud ready:") == 2
            assert f"install {data / 'mosquitto.acl'}" in text
            assert (data / "ca" / "ca.pem").read_text() == ca_pem
            assert (data / "tokens" / "operator.token").read_text().strip() == token
            out = await cli(data, "gateways", "--json")
            assert [g["id"] for g in json.loads(out.stdout)] == ["gw-s"]
            out = await cli(data, "keys", "list")
            assert out.stdout.splitlines()[1].endswith("current"), out.stdout

            external = dataclasses.replace(prov, mqtt_url=broker.url)
            async with GatewayLink(external, tmp_path / "again") as gw:
                gw.send(
                    "hello",
                    {"version": "1", "region": prov.region, "household": prov.household, "devices": 0},
                )
                update = await gw.wait_down(lambda d: d.envelope.type == "trust.update", what="trust.update")
                assert update.verified
                for key in update.envelope.payload["add"]:
                    gw.trust.add(TrustedKey.model_validate(key))
                await gw.wait_acked(gw.send("event", {"kind": "after-restart", "device": "d", "seq": 2}))
            out = await cli(data, "gateways", "--json")
            assert json.loads(out.stdout)[0]["version"] == "1"

            # A box provisioned now gets into the ACL file; the operator reloads the broker.
            out = await cli(
                data, "workorder", "create", "--household", "沈阳-003", "--region", "210103", "--json"
            )
            third = await _provision(
                json.loads((data / "cloud.json").read_text())["api_url"],
                json.loads(out.stdout)["code"],
                "gw-t",
            )
            assert third.mqtt_url == broker.url
            assert "user gw-t" in (data / "mosquitto.acl").read_text()
            await broker.reload()
            async with GatewayLink(third, tmp_path / "third") as gw:
                await gw.wait_acked(gw.send("event", {"kind": "hello-external"}))
            async with asyncio.timeout(6):
                code = await child.stop(timeout_s=5.0)
            assert code == 0, child.log_tail()
        finally:
            await child.kill()
