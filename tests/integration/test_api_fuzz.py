"""schemathesis against the gateway's own `/openapi.json`, on a real gateway process.

Every operation is fuzzed (coverage, fuzzing and stateful phases) without a token, with a
household token and with the admin token: no 500s, every status and body as documented,
`Allow` headers right. Only `positive_data_acceptance` is left out: a schema-valid device
command (`{}`, `{"x": 1}`) is still refused when the device has no such capability, and says why.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

from gateway.broker import PrivateBroker
from tests.helpers import announce_tasmota_plug, gateway_child

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


def fuzz(url: str, *headers: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(SCHEMATHESIS), "run", f"{url}/openapi.json", "--checks", "all",
            "--exclude-checks", "positive_data_acceptance",
            "--exclude-path", "/api/v1/stream",  # server-sent events: an endless response by design
            "--max-examples", "40", "--seed", "20261126", "--request-timeout", "10",
            *(arg for h in headers for arg in ("-H", h)),
        ],
        capture_output=True, text=True, timeout=600, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "120"},
    )  # fmt: skip


async def test_the_local_api_keeps_its_openapi_promises(broker: PrivateBroker, tmp_path: Path) -> None:
    state = tmp_path / "state"
    announce_tasmota_plug(broker)
    child = gateway_child(broker, state)
    await child.start()
    try:
        url = (state / "http.url").read_text().strip()
        admin = (state / "admin.token").read_text().strip()
        async with httpx.AsyncClient(base_url=url) as client:
            pin = (await client.get("/api/v1/pairing/pin")).json()["pin"]
            paired = await client.post("/api/v1/pair", json={"pin": pin, "name": "fuzz"})
            household = paired.json()["token"]
        for who, headers in (
            ("nobody", ()),
            ("household", (f"Authorization: Bearer {household}",)),
            ("admin", (f"Authorization: Bearer {admin}",)),
        ):
            run = await asyncio.to_thread(fuzz, url, *headers)
            assert run.returncode == 0, f"as {who}:\n{run.stdout[-8000:]}\n{run.stderr[-2000:]}"
            generated = re.search(r"(\d+) generated", run.stdout)
            assert generated and int(generated.group(1)) >= 100, run.stdout[-2000:]
        assert child.running, "the gateway survived the fuzzing"
    finally:
        await child.stop()
