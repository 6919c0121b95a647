"""SenML (RFC 8428) in JSON and CBOR: parse a pack into resolved records, strictly at the edge.

Only `SenMLError` ever escapes `parse_senml`, whatever the bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cbor2
import orjson

__all__ = ["CT_SENML_CBOR", "CT_SENML_JSON", "Record", "SenMLError", "parse_senml"]

CT_SENML_JSON = 110  # RFC 8428 §12.3
CT_SENML_CBOR = 112
_MAX_PACK_BYTES = 64 * 1024
_MAX_RECORDS = 512

# RFC 8428 §6: CBOR labels
_CBOR_LABELS = {
    -1: "bver",
    -2: "bn",
    -3: "bt",
    -4: "bu",
    -5: "bv",
    -6: "bs",
    0: "n",
    1: "u",
    2: "v",
    3: "vs",
    4: "vb",
    5: "s",
    6: "t",
    7: "ut",
    8: "vd",
}


class SenMLError(ValueError):
    """The payload is not a usable SenML pack."""


@dataclass(frozen=True, slots=True)
class Record:
    """A resolved record: full name (base name + name), time, one value, unit."""

    name: str
    value: float | str | bool | bytes
    time: float = 0.0
    unit: str = ""


def _decode(payload: bytes, content_format: int) -> Any:
    if len(payload) > _MAX_PACK_BYTES:
        raise SenMLError(f"SenML pack larger than {_MAX_PACK_BYTES} bytes")
    try:
        if content_format == CT_SENML_CBOR:
            return cbor2.loads(payload)
        return orjson.loads(payload)
    except (
        ValueError,
        cbor2.CBORDecodeError,
        TypeError,
        OverflowError,
        RecursionError,
        MemoryError,
    ) as exc:
        raise SenMLError(f"not {'CBOR' if content_format == CT_SENML_CBOR else 'JSON'}: {exc}") from exc


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SenMLError(f"{field} must be a number")
    try:
        number = float(value)  # a CBOR bignum or a long JSON integer may not fit a double
    except OverflowError as exc:
        raise SenMLError(f"{field} is too large") from exc
    if not math.isfinite(number):
        raise SenMLError(f"{field} must be finite")
    return number


def parse_senml(payload: bytes, content_format: int = CT_SENML_JSON) -> list[Record]:
    """Resolve a SenML pack (RFC 8428 §4.6): base values applied, one value per record."""
    data = _decode(payload, content_format)
    if not isinstance(data, list):
        raise SenMLError("a SenML pack is an array")
    if len(data) > _MAX_RECORDS:
        raise SenMLError(f"more than {_MAX_RECORDS} records")
    base_name, base_time, base_unit, base_value = "", 0.0, "", 0.0
    out: list[Record] = []
    for raw in data:
        if not isinstance(raw, dict):
            raise SenMLError("a record is an object")
        rec = {(_CBOR_LABELS.get(k, str(k)) if isinstance(k, int) else str(k)): v for k, v in raw.items()}
        if "bn" in rec:
            if not isinstance(rec["bn"], str):
                raise SenMLError("bn must be a string")
            base_name = rec["bn"]
        if "bt" in rec:
            base_time = _number(rec["bt"], "bt")
        if "bu" in rec:
            if not isinstance(rec["bu"], str):
                raise SenMLError("bu must be a string")
            base_unit = rec["bu"]
        if "bv" in rec:
            base_value = _number(rec["bv"], "bv")
        name = rec.get("n", "")
        if not isinstance(name, str):
            raise SenMLError("n must be a string")
        values = [k for k in ("v", "vs", "vb", "vd", "s") if k in rec]
        if not values:
            if "n" in rec:
                raise SenMLError(f"record {name!r} has no value")
            continue  # a record with base fields only
        if len(values) > 1:
            raise SenMLError(f"record {name!r} has more than one value")
        kind = values[0]
        value: float | str | bool | bytes
        if kind in ("v", "s"):
            value = _number(rec[kind], kind) + base_value
        elif kind == "vs":
            if not isinstance(rec["vs"], str):
                raise SenMLError("vs must be a string")
            value = rec["vs"]
        elif kind == "vb":
            if not isinstance(rec["vb"], bool):
                raise SenMLError("vb must be a boolean")
            value = rec["vb"]
        else:
            if not isinstance(rec["vd"], str | bytes):
                raise SenMLError("vd must be data")
            value = rec["vd"] if isinstance(rec["vd"], bytes) else rec["vd"].encode()
        full = base_name + name
        if not full or len(full) > 256:
            raise SenMLError("record without a usable name")
        unit = rec.get("u", base_unit)
        t = _number(rec["t"], "t") if "t" in rec else 0.0
        out.append(Record(full, value, base_time + t, unit if isinstance(unit, str) else ""))
    return out
