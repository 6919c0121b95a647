"""Device model shared by every part of the gateway: kinds, capabilities, device info.

These are the payloads of Contract 1 (docs/mqtt-contract.md). Capability names are extended,
never renamed.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from gateway.errors import CommandRejected

__all__ = [
    "CAPABILITIES",
    "DEVICE_ID_PATTERN",
    "CapabilitySpec",
    "DeviceId",
    "DeviceInfo",
    "Kind",
    "clean_state",
    "iso_now",
    "validate_command",
]

DEVICE_ID_PATTERN = r"^[a-z0-9_-]{1,64}$"
DeviceId = Annotated[str, StringConstraints(pattern=DEVICE_ID_PATTERN)]
_DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)

#: Largest `set` payload we parse; a command is a handful of values.
MAX_COMMAND_BYTES = 16 * 1024


class Kind(StrEnum):
    TV = "tv"
    SPEAKER = "speaker"
    SENSOR = "sensor"
    PLUG = "plug"
    LIGHT = "light"
    SWITCH = "switch"
    LOCK = "lock"
    CAMERA = "camera"
    GATEWAY = "gateway"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class CapabilitySpec:
    """What values a capability takes. `types` are JSON types after parsing."""

    name: str
    types: tuple[type, ...]
    minimum: float | None = None
    maximum: float | None = None
    unit: str | None = None
    integer: bool = False
    nullable: bool = False
    max_length: int = 256


def _spec(name: str, *types: type, **kw: Any) -> CapabilitySpec:
    return CapabilitySpec(name, types, **kw)


#: Every capability the contract knows (DESIGN.md Contract 1); extend, never rename.
CAPABILITIES: Mapping[str, CapabilitySpec] = {
    s.name: s
    for s in (
        _spec("on", bool),
        _spec("brightness", int, minimum=0, maximum=100, unit="%", integer=True),
        _spec("color_temp", int, minimum=1000, maximum=10000, unit="K", integer=True),
        _spec("temperature", float, minimum=-80, maximum=200, unit="°C"),
        _spec("humidity", float, minimum=0, maximum=100, unit="%"),
        _spec("smoke", bool),
        _spec("co", float, minimum=0, maximum=100000, unit="ppm"),
        _spec("contact", bool),
        _spec("motion", bool),
        _spec("battery", float, minimum=0, maximum=100, unit="%"),
        _spec("power", float, minimum=-1e6, maximum=1e6, unit="W"),
        _spec("energy", float, minimum=0, maximum=1e9, unit="kWh"),
        _spec("voltage", float, minimum=0, maximum=1000, unit="V"),
        _spec("current", float, minimum=0, maximum=1000, unit="A"),
        _spec("illuminance", float, minimum=0, maximum=200000, unit="lx"),
        _spec("volume", int, minimum=0, maximum=100, unit="%", integer=True),
        _spec("muted", bool),
        _spec("channel", int, str, minimum=0, maximum=99999, integer=True, max_length=64),
        _spec("input", str, max_length=64),
        _spec("playing", bool),
        _spec("overlay", dict, nullable=True),
        _spec("say", dict, str, max_length=2000),
    )
}


def iso_now() -> str:
    """Current UTC time as ISO-8601 with milliseconds and a Z suffix."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class DeviceInfo(BaseModel):
    """`home/<gw>/device/<id>/info`: what a device is. Published retained."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: DeviceId
    name: str = Field(max_length=128)
    kind: Kind
    room: str = Field(default="", max_length=64)
    protocol: str = Field(max_length=32)
    model: str = Field(default="", max_length=128)
    manufacturer: str = Field(default="", max_length=128)
    address: str = Field(default="", max_length=256)
    capabilities: tuple[str, ...] = ()
    #: Capabilities a `set` command may change (a subset of `capabilities`, plus write-only
    #: ones such as `say`). An extension of the contract's info payload.
    settable: tuple[str, ...] = ()
    controllable: bool = False
    #: Per-device limits narrower than the contract's (for example a bulb's colour range).
    ranges: dict[str, tuple[float, float]] = Field(default_factory=dict)


def _check_value(spec: CapabilitySpec, value: Any, limits: tuple[float, float] | None) -> Any:
    """Return the value normalized for `spec`, or raise CommandRejected."""
    if value is None:
        if spec.nullable:
            return None
        raise CommandRejected("wrong_type", f"{spec.name} must not be null")
    if isinstance(value, bool):
        if bool in spec.types:
            return value
        raise CommandRejected("wrong_type", f"{spec.name} takes {_type_words(spec)}, not a boolean")
    if isinstance(value, int | float) and (int in spec.types or float in spec.types):
        if isinstance(value, float) and not math.isfinite(value):
            raise CommandRejected("out_of_range", f"{spec.name} must be a finite number")
        if spec.integer and isinstance(value, float):
            if not value.is_integer():
                raise CommandRejected("wrong_type", f"{spec.name} takes a whole number")
            value = int(value)
        low, high = limits or (spec.minimum, spec.maximum)
        if (low is not None and value < low) or (high is not None and value > high):
            raise CommandRejected("out_of_range", f"{spec.name}={value} is outside {_fmt(low)}..{_fmt(high)}")
        return value
    if isinstance(value, str) and str in spec.types:
        if len(value) > spec.max_length:
            raise CommandRejected("out_of_range", f"{spec.name} is longer than {spec.max_length}")
        return value
    if isinstance(value, dict) and dict in spec.types:
        if len(json.dumps(value, ensure_ascii=False)) > MAX_COMMAND_BYTES:
            raise CommandRejected("out_of_range", f"{spec.name} object is too large")
        return value
    raise CommandRejected("wrong_type", f"{spec.name} takes {_type_words(spec)}")


def _fmt(x: float | None) -> str:
    if x is None:
        return ""
    return str(int(x)) if float(x).is_integer() else str(x)


_TYPE_WORDS = {
    bool: "true/false",
    int: "a number",
    float: "a number",
    str: "text",
    dict: "an object",
}


def _type_words(spec: CapabilitySpec) -> str:
    words = dict.fromkeys(_TYPE_WORDS[t] for t in spec.types)
    if spec.nullable:
        words["null"] = None
    return " or ".join(words)


def validate_command(info: DeviceInfo | None, payload: bytes | str) -> dict[str, Any]:
    """Parse and check a `set` payload against a device; return the normalized values.

    Raises CommandRejected (and nothing else) with a stable `reason` code for any bad input.
    """
    if info is None:
        raise CommandRejected("unknown_device", "no such device")
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandRejected("too_large", f"command is larger than {MAX_COMMAND_BYTES} bytes")
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise CommandRejected("invalid_json", f"payload is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CommandRejected("not_an_object", "a command is a JSON object of capability values")
    if not data:
        raise CommandRejected("empty_command", "the command names no capability")
    values: dict[str, Any] = {}
    for name, value in data.items():
        spec = CAPABILITIES.get(name)
        if spec is None:
            raise CommandRejected("unknown_capability", f"unknown capability {name!r}")
        if name in info.settable and not info.controllable:
            raise CommandRejected("not_controllable", f"the gateway cannot control {info.id}")
        if name not in info.settable:
            if name in info.capabilities:
                raise CommandRejected("read_only", f"{name} is read-only on {info.id}")
            raise CommandRejected("unsupported_capability", f"{info.id} has no {name}")
        values[name] = _check_value(spec, value, info.ranges.get(name))
    return values


def clean_state(values: Mapping[str, Any], allowed: Iterable[str]) -> tuple[dict[str, Any], int]:
    """Keep the values a device may report: known, allowed capabilities of the right type and
    range. Returns (clean values, number dropped). For state coming from devices."""
    allowed_set = set(allowed)
    out: dict[str, Any] = {}
    dropped = 0
    for name, value in values.items():
        spec = CAPABILITIES.get(name)
        if spec is None or name not in allowed_set:
            dropped += 1
            continue
        try:
            out[name] = _check_value(spec, value, None)
        except CommandRejected:
            dropped += 1
    return out, dropped


def is_device_id(text: str) -> bool:
    return bool(_DEVICE_ID_RE.match(text))
