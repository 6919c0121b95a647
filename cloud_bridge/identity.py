"""The box's identity with the cloud, as provisioned: who it is, where it lives, how it proves it.

Stored in `<state_dir>/identity/` (0700): `identity.json` (gateway id, household, region, the
cloud's MQTT and API URLs), `client.key` (0600, made on the box and never sent anywhere),
`client.pem` (the certificate the operator's CA issued), `ca.pem` (trust anchor for the cloud's
TLS), `trust.json` (operator keys that sign messages).
"""

from __future__ import annotations

import json
import shutil
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, ValidationError

from cloud_bridge.ca import CertInfo, cert_info, write_private
from cloud_bridge.protocol import BridgeError, TrustedKey, TrustStore, region_prefixes

__all__ = ["IDENTITY_DIR", "Identity", "IdentityRecord", "NotProvisioned"]

IDENTITY_DIR = "identity"


class NotProvisioned(BridgeError):
    """This box has no cloud identity yet (run `gateway provision`)."""


class IdentityRecord(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    gateway_id: str
    household: str
    region: str
    mqtt_url: str
    api_url: str = ""
    provisioned_at: str = ""


@dataclass(frozen=True, slots=True)
class Identity:
    directory: Path
    record: IdentityRecord
    trust: TrustStore

    @property
    def gateway_id(self) -> str:
        return self.record.gateway_id

    @property
    def region(self) -> str:
        return self.record.region

    @property
    def cert_path(self) -> Path:
        return self.directory / "client.pem"

    @property
    def key_path(self) -> Path:
        return self.directory / "client.key"

    @property
    def ca_path(self) -> Path:
        return self.directory / "ca.pem"

    def certificate(self) -> CertInfo:
        return cert_info(self.cert_path.read_bytes())

    def mqtt_host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.record.mqtt_url)
        if parts.scheme != "mqtts" or not parts.hostname:
            raise BridgeError(f"cloud MQTT URL must be mqtts://HOST:PORT, not {self.record.mqtt_url!r}")
        return parts.hostname, parts.port or 8883

    def tls_context(self) -> ssl.SSLContext:
        """Mutual TLS: the operator's CA for the server, our certificate for us."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_path))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.cert_path), str(self.key_path))
        return ctx

    @classmethod
    def load(cls, state_dir: Path) -> Identity:
        directory = state_dir / IDENTITY_DIR
        try:
            record = IdentityRecord.model_validate_json((directory / "identity.json").read_bytes())
            keys = [TrustedKey.model_validate(k) for k in json.loads((directory / "trust.json").read_bytes())]
        except FileNotFoundError as exc:
            raise NotProvisioned(
                f"no cloud identity in {directory}; run `gateway provision --cloud URL --code CODE`"
            ) from exc
        except (ValidationError, ValueError) as exc:
            raise BridgeError(f"the identity in {directory} is damaged ({exc}); provision again") from exc
        region_prefixes(record.region)
        return cls(directory, record, TrustStore(keys))

    @classmethod
    def save(
        cls,
        state_dir: Path,
        record: IdentityRecord,
        *,
        key_pem: bytes,
        cert_pem: bytes,
        ca_pem: bytes,
        trust: list[TrustedKey],
    ) -> Identity:
        directory = state_dir / IDENTITY_DIR
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        directory.chmod(0o700)
        if not record.provisioned_at:
            record = record.model_copy(update={"provisioned_at": datetime.now(UTC).isoformat()})
        write_private(directory / "client.key", key_pem)
        write_private(directory / "client.pem", cert_pem)
        write_private(directory / "ca.pem", ca_pem)
        write_private(
            directory / "trust.json", json.dumps([k.model_dump() for k in trust], indent=2).encode()
        )
        write_private(directory / "identity.json", record.model_dump_json(indent=2).encode())
        return cls.load(state_dir)

    def save_trust(self) -> None:
        write_private(
            self.directory / "trust.json",
            json.dumps([k.model_dump() for k in self.trust.entries], indent=2).encode(),
        )

    @staticmethod
    def wipe(state_dir: Path) -> bool:
        directory = state_dir / IDENTITY_DIR
        if not directory.exists():
            return False
        shutil.rmtree(directory)
        return True
