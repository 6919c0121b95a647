"""The installer's flow on the box: `gateway provision` and `gateway reset --factory`.

Provisioning claims the box with the cloud using a work-order code: the box makes its own key
pair and certificate request (the key never leaves it), sends the request with the code, and
stores what comes back — its certificate, the operator's CA, the operator's signing keys,
household and region — with owner-only permissions.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from cloud_bridge.ca import cert_info, make_csr
from cloud_bridge.identity import Identity, IdentityRecord
from cloud_bridge.protocol import BridgeError, TrustedKey
from gateway.errors import GatewayError

__all__ = ["ProvisionError", "factory_reset", "provision"]

_TIMEOUT_S = 20.0
# What the installer reads when the cloud says no, by the cloud's reason code.
_ADVICE = {
    "unknown_code": (
        "the cloud does not know this work-order code; "
        "check it (letters and digits, as printed on the work order)"
    ),
    "code_used": "this work order was already used to provision a box; ask the operator for a new work order",
    "code_expired": "this work order has expired; ask the operator for a new one",
    "bad_csr": "the cloud refused the certificate request; this is a bug, please report it with the log",
}


class ProvisionError(GatewayError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Provisioned:
    identity: Identity
    cert_not_after: str


def provision(
    state_dir: Path, *, cloud_url: str, code: str, gateway_id: str, verify: bool | str = True
) -> Provisioned:
    """Claim this box with the cloud. Blocking (run it in a thread from async code)."""
    key_pem, csr_pem = make_csr(gateway_id)
    body = {"code": code.strip().upper(), "gateway_id": gateway_id, "csr_pem": csr_pem.decode()}
    url = cloud_url.rstrip("/") + "/v1/provision"
    try:
        with httpx.Client(timeout=_TIMEOUT_S, verify=verify, trust_env=False) as client:
            response = client.post(url, json=body)
    except httpx.HTTPError as exc:
        raise ProvisionError(
            "unreachable", f"cannot reach the cloud at {cloud_url}: {exc}; check the address and the network"
        ) from exc
    if response.status_code >= 400:
        reason, message = _problem(response)
        raise ProvisionError(
            reason, f"provisioning refused ({response.status_code}): {_ADVICE.get(reason, message)}"
        )
    try:
        data = response.json()
        record = IdentityRecord(
            gateway_id=data["gateway_id"],
            household=data["household"],
            region=data["region"],
            mqtt_url=data["mqtt_url"],
            api_url=data.get("api_url") or cloud_url,
        )
        trust = [TrustedKey.model_validate(k) for k in data["trust"]]
        cert_pem = data["certificate_pem"].encode()
        ca_pem = data["ca_pem"].encode()
        info = cert_info(cert_pem)
    except (KeyError, TypeError, ValueError, BridgeError) as exc:
        raise ProvisionError("bad_answer", f"the cloud's answer is not usable: {exc}") from exc
    if info.common_name != gateway_id:
        raise ProvisionError("bad_answer", f"the certificate names {info.common_name!r}, not this box")
    if not trust:
        raise ProvisionError("bad_answer", "the cloud sent no signing keys to trust")
    identity = Identity.save(
        state_dir, record, key_pem=key_pem, cert_pem=cert_pem, ca_pem=ca_pem, trust=trust
    )
    return Provisioned(identity, info.not_after.isoformat())


def _problem(response: httpx.Response) -> tuple[str, str]:
    try:
        detail: Any = response.json().get("detail")
    except ValueError:
        return "error", response.text[:200]
    if isinstance(detail, dict):
        return str(detail.get("reason", "error")), str(detail.get("message", ""))
    return "error", str(detail)[:200]


def factory_reset(state_dir: Path) -> list[str]:
    """Wipe identity and household data: the cloud identity, the registry, the outbox, the admin
    token and every household token (a new household's phones must pair again). The broker
    logins made for devices stay (the broker has them too): remove them first with
    `gateway logins remove` when the devices leave with the household. Returns what was removed."""
    removed = []
    if Identity.wipe(state_dir):
        removed.append("cloud identity")
    for name in ("registry.sqlite3", "registry.sqlite3-wal", "registry.sqlite3-shm", "outbox.sqlite3",
                 "outbox.sqlite3-wal", "outbox.sqlite3-shm", "admin.token", "http.url",
                 "household_tokens.json"):  # fmt: skip
        path = state_dir / name
        if path.exists():
            path.unlink()
            removed.append(name)
    for directory in ("services", "alerts"):
        if (state_dir / directory).is_dir():
            shutil.rmtree(state_dir / directory)
            removed.append(directory)
    return removed
