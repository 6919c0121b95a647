"""The gateway ↔ 北方云 wire (Contract 3): topics, the envelope, canonical JSON, Ed25519.

Everything that carries operator authority is signed with Ed25519 over the canonical JSON of
the envelope without `sig`: keys sorted, no insignificant whitespace, UTF-8, `null` fields
left out. `kid` names the signing key and is itself signed, so a signature cannot be moved to
another key. A gateway acts only on messages that verify against its trust store.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "MAX_ENVELOPE_BYTES",
    "BridgeError",
    "Envelope",
    "SignatureError",
    "Signer",
    "TrustStore",
    "TrustedKey",
    "canonical_json",
    "key_id",
    "new_envelope",
    "parse_envelope",
    "region_prefixes",
    "topics",
]

MAX_ENVELOPE_BYTES = 256 * 1024
PROTOCOL_VERSION = 1
_REGION = re.compile(r"\d{2}(\d{2}(\d{2}(\d{3}(\d{3})?)?)?)?", re.ASCII)  # used with fullmatch
_PREFIX_LENGTHS = (2, 4, 6, 9, 12)  # 行政区划代码: province, city, county, town, village


class BridgeError(Exception):
    """Root of cloud_bridge's errors."""


class SignatureError(BridgeError):
    """A message that must not be acted on. `reason`: unsigned, unknown_key, bad_signature,
    expired_key, malformed, replay, stale, future."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_ts(text: str) -> datetime:
    """ISO-8601 with a zone (Z or ±hh:mm) → aware datetime; ValueError otherwise."""
    ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if ts.tzinfo is None:
        raise ValueError("timestamp without a time zone")
    return ts


class Envelope(BaseModel):
    """Every message on the cloud link."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1  # PROTOCOL_VERSION
    id: str = Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    type: str = Field(min_length=1, max_length=48, pattern=r"^[a-z][a-z0-9_.]*$")
    ts: str = Field(max_length=40)
    gateway_id: str | None = Field(default=None, max_length=64)
    kid: str | None = Field(default=None, max_length=64)
    payload: dict[str, Any] = Field(default_factory=dict)
    sig: str | None = Field(default=None, max_length=200)

    @field_validator("ts")
    @classmethod
    def _ts(cls, value: str) -> str:
        parse_ts(value)
        return value

    @property
    def timestamp(self) -> datetime:
        return parse_ts(self.ts)

    def signable(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"sig"}, exclude_none=True)

    def to_bytes(self) -> bytes:
        return json.dumps(
            self.model_dump(mode="json", exclude_none=True), ensure_ascii=False, separators=(",", ":")
        ).encode()


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no insignificant whitespace, UTF-8; NaN and Infinity are refused."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def new_envelope(
    type_: str,
    payload: Mapping[str, Any],
    *,
    gateway_id: str | None = None,
    id_: str | None = None,
    ts: datetime | None = None,
) -> Envelope:
    return Envelope(
        id=id_ or str(uuid.uuid4()),
        type=type_,
        ts=iso(ts or utc_now()),
        gateway_id=gateway_id,
        payload=dict(payload),
    )


def parse_envelope(raw: bytes) -> Envelope:
    """Bytes off the wire → Envelope; SignatureError("malformed") for anything else."""
    if len(raw) > MAX_ENVELOPE_BYTES:
        raise SignatureError("malformed", f"larger than {MAX_ENVELOPE_BYTES} bytes")
    try:
        return Envelope.model_validate_json(raw)
    except ValidationError as exc:
        raise SignatureError("malformed", f"{exc.error_count()} validation errors") from exc


def key_id(public_key: Ed25519PublicKey) -> str:
    """A stable short name for a public key: the first 16 hex digits of its SHA-256."""
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


class Signer:
    """The operator's side: signs envelopes with one Ed25519 key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.kid = key_id(private_key.public_key())

    @classmethod
    def generate(cls) -> Signer:
        return cls(Ed25519PrivateKey.generate())

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    def public_key_b64(self) -> str:
        return base64.b64encode(self.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()

    def sign(self, envelope: Envelope) -> Envelope:
        unsigned = envelope.model_copy(update={"kid": self.kid, "sig": None})
        sig = self._key.sign(canonical_json(unsigned.signable()))
        return unsigned.model_copy(update={"sig": base64.b64encode(sig).decode()})


class TrustedKey(BaseModel):
    """One entry of the gateway's trust store."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kid: str
    public_key: str  # base64 of the raw 32-byte Ed25519 key
    not_after: str | None = None  # ISO-8601; signatures by this key are refused after it

    def load(self) -> Ed25519PublicKey:
        try:
            raw = base64.b64decode(self.public_key, validate=True)
            key = Ed25519PublicKey.from_public_bytes(raw)
        except (binascii.Error, ValueError) as exc:
            raise BridgeError(f"trust store key {self.kid} is not an Ed25519 public key") from exc
        if key_id(key) != self.kid:
            raise BridgeError(f"trust store key {self.kid} does not match its key id")
        return key


class TrustStore:
    """Operator keys this gateway accepts (provisioned; rotated by signed `trust.update`)."""

    def __init__(self, keys: Iterable[TrustedKey] = ()) -> None:
        self._entries: dict[str, TrustedKey] = {}
        self._keys: dict[str, Ed25519PublicKey] = {}
        for entry in keys:
            self.add(entry)

    def add(self, entry: TrustedKey) -> None:
        self._keys[entry.kid] = entry.load()
        self._entries[entry.kid] = entry

    def remove(self, kid: str) -> None:
        self._keys.pop(kid, None)
        self._entries.pop(kid, None)

    @property
    def entries(self) -> list[TrustedKey]:
        return list(self._entries.values())

    def __len__(self) -> int:
        return len(self._keys)

    def verify(self, envelope: Envelope, *, now: datetime | None = None) -> None:
        """SignatureError unless `envelope` is signed by a trusted, unexpired key."""
        if not envelope.sig or not envelope.kid:
            raise SignatureError("unsigned", envelope.type)
        key = self._keys.get(envelope.kid)
        if key is None:
            raise SignatureError("unknown_key", envelope.kid)
        not_after = self._entries[envelope.kid].not_after
        if not_after is not None and (now or utc_now()) > parse_ts(not_after):
            raise SignatureError("expired_key", envelope.kid)
        try:
            sig = base64.b64decode(envelope.sig, validate=True)
            key.verify(sig, canonical_json(envelope.signable()))
        except (binascii.Error, ValueError, InvalidSignature) as exc:
            raise SignatureError("bad_signature", envelope.type) from exc


def check_fresh(
    envelope: Envelope,
    *,
    max_age: timedelta,
    max_skew: timedelta = timedelta(minutes=5),
    now: datetime | None = None,
) -> None:
    """SignatureError("stale"/"future") for messages outside their time window."""
    now = now or utc_now()
    ts = envelope.timestamp
    if ts > now + max_skew:
        raise SignatureError("future", envelope.ts)
    if ts < now - max_age:
        raise SignatureError("stale", envelope.ts)


def region_prefixes(region: str) -> list[str]:
    """行政区划代码 → the codes of every level it belongs to: 210102 → 21, 2101, 210102."""
    if not isinstance(region, str) or not _REGION.fullmatch(region):
        raise ValueError(f"not a region code (2, 4, 6, 9 or 12 digits): {region!r}")
    return [region[:n] for n in _PREFIX_LENGTHS if n <= len(region)]


def region_matches(target: str, region: str) -> bool:
    """Whether a message for `target` reaches a gateway in `region` (prefix on level boundaries)."""
    return target in region_prefixes(region)


class topics:
    """Topic names of Contract 3."""

    ALL_ALERT = "bfy/v1/all/alert"
    ALL_SERVICE = "bfy/v1/all/service"

    @staticmethod
    def region(code: str, kind: str) -> str:
        return f"bfy/v1/region/{code}/{kind}"

    @staticmethod
    def down(gateway_id: str) -> str:
        return f"bfy/v1/gw/{gateway_id}/down"

    @staticmethod
    def up(gateway_id: str) -> str:
        return f"bfy/v1/gw/{gateway_id}/up"

    @staticmethod
    def presence(gateway_id: str) -> str:
        return f"bfy/v1/gw/{gateway_id}/presence"

    @staticmethod
    def gateway_subscriptions(gateway_id: str, region: str) -> list[str]:
        subs = [topics.ALL_ALERT, topics.ALL_SERVICE, topics.down(gateway_id)]
        for code in region_prefixes(region):
            subs += [topics.region(code, "alert"), topics.region(code, "service")]
        return subs
