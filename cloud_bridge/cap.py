"""CAP 1.2 intake: parse, validate and normalize emergency alerts (Contract 3, "Alerts").

The operator API takes OASIS Common Alerting Protocol 1.2 messages (CAP-v1.2-os, 1 July 2010) as
XML, or the same content as JSON whose field names are this module's snake_case model names.
Both end in the same frozen `Alert` model, which is the wire format towards the gateways, and
go through the same data-dictionary rules (CAP 1.2 §3.2). Every refusal is one `CapError`
listing every reason found, each prefixed with the element path (`alert/info[2]/area[1]/...`).

XML is parsed defensively, in this order:

1. the length is checked before anything looks at the bytes (`max_bytes`, default 1 MB);
2. defusedxml (expat) runs over the document with DTDs, entity declarations and external
   references forbidden, so a DOCTYPE of any kind - billion laughs, XXE to ``file://`` or
   ``http://`` - is refused at its first token and never reaches libxml2;
3. lxml parses it with a hardened parser (no entity substitution, no DTD loading or
   validation, no network, no huge trees; XInclude is never processed) and the result is
   checked once more for any DTD, as a second, independent line;
4. the tree is validated against the official CAP 1.2 schema shipped in
   ``cloud_bridge/schemas/CAP-v1.2.xsd``; its trailing wildcard admits enveloped XML
   signatures (§3.3.4), which are tolerated and otherwise ignored: verifying the authority's
   signature is out of scope here - the operator re-signs the normalized alert (Ed25519,
   Contract 3) after its own checks.

Why both parsers: lxml is needed for XSD validation and line numbers, and defusedxml's expat
gate is a small, well-reviewed refusal of everything DTD-shaped that does not depend on
libxml2's own entity limits.

JSON leniency: a JSON alert may spell UTC as a trailing ``Z`` in any time field (JSON APIs do);
CAP 1.2 §3.3.2 forbids that in XML, where the schema refuses it. Everything else is as strict
as for XML.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from functools import cache
from importlib import resources
from typing import Any, Literal
from xml.etree.ElementTree import ParseError as _ExpatParseError

import defusedxml.ElementTree as _defused_et  # type: ignore[import-untyped]
from defusedxml import DefusedXmlException
from lxml import etree  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cloud_bridge.protocol import BridgeError

__all__ = [
    "CAP_NAMESPACE",
    "MAX_CAP_BYTES",
    "REGION_GEOCODE_NAMES",
    "Alert",
    "Area",
    "CapError",
    "Circle",
    "Geocode",
    "Info",
    "NameValue",
    "Reference",
    "alert_identity",
    "alert_problems",
    "expires_utc",
    "lang_order",
    "parse_cap_json",
    "parse_cap_xml",
    "priority",
    "regions",
    "sent_utc",
]

CAP_NAMESPACE = "urn:oasis:names:tc:emergency:cap:1.2"
XMLDSIG_NAMESPACE = "http://www.w3.org/2000/09/xmldsig#"
MAX_CAP_BYTES = 1_000_000
MAX_REASONS = 50  # a refusal lists at most this many reasons, then says how many more
_SCHEMA_RESOURCE = "schemas/CAP-v1.2.xsd"
_NS = "{" + CAP_NAMESPACE + "}"
_ID_HEX = 24

# CAP 1.2 §3.3.2: "YYYY-MM-DDThh:mm:ssXzh:zm"; the trailing Z alternative is the JSON leniency.
_TIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:([+-])(\d{2}):(\d{2})|(Z))", re.ASCII)
# RFC 3066 tag syntax, which is also xs:language's pattern (CAP 1.2 §3.2.2 "language").
_LANGUAGE = re.compile(r"[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*", re.ASCII)  # used with fullmatch
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)", re.ASCII)  # used with fullmatch
_QUOTED_OR_WORD = re.compile(r'"([^"]*)"|(\S+)')
# CAP 1.2 §3.2.1 identifier/sender: "MUST NOT include spaces, commas or restricted characters".
_ID_FORBIDDEN = re.compile(r"[\s,<&]")

_CATEGORIES = ("Geo", "Met", "Safety", "Security", "Rescue", "Fire", "Health", "Env", "Transport",
               "Infra", "CBRNE", "Other")  # fmt: skip
_RESPONSE_TYPES = ("Shelter", "Evacuate", "Prepare", "Execute", "Avoid", "Monitor", "Assess",
                   "AllClear", "None")  # fmt: skip
_URGENCIES = ("Immediate", "Expected", "Future", "Past", "Unknown")
_SEVERITIES = ("Extreme", "Severe", "Moderate", "Minor", "Unknown")
_CERTAINTIES = ("Observed", "Likely", "Possible", "Unlikely", "Unknown")

Status = Literal["Actual", "Exercise", "System", "Test", "Draft"]
MsgType = Literal["Alert", "Update", "Cancel", "Ack", "Error"]
Scope = Literal["Public", "Restricted", "Private"]


class CapError(BridgeError):
    """A CAP message that was refused; `reasons` lists every problem found, in plain English."""

    def __init__(self, reasons: Sequence[str]) -> None:
        self.reasons = list(reasons) or ["unknown problem"]
        shown = self.reasons[:MAX_REASONS]
        more = len(self.reasons) - len(shown)
        tail = f"; and {more} more" if more > 0 else ""
        super().__init__("CAP message refused: " + "; ".join(shown) + tail)


# --------------------------------------------------------------------------- times and identity


def _parse_cap_time(text: str) -> datetime:
    """A CAP 1.2 §3.3.2 dateTime (or ...Z) → aware datetime; ValueError saying what is wrong."""
    m = _TIME.fullmatch(text)
    if m is None:
        raise ValueError(f"{text!r} is not a CAP dateTime like 2003-06-17T14:57:00-07:00 (CAP 1.2 §3.3.2)")
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    if m.group(10):
        zone = UTC
    else:
        zh, zm = int(m.group(8)), int(m.group(9))
        if zh > 23 or zm > 59:
            raise ValueError(f"{text!r} has an impossible time-zone offset")
        offset = timedelta(hours=zh, minutes=zm)
        zone = timezone(-offset if m.group(7) == "-" else offset)
    try:
        when = datetime(year, month, day, hour, minute, second, tzinfo=zone)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a valid date and time ({exc})") from exc
    try:
        when.astimezone(UTC)  # years 1 and 9999 can fall off the calendar once moved to UTC
    except OverflowError as exc:
        raise ValueError(f"{text!r} is out of range once converted to UTC") from exc
    return when


def _utc_text(sent: str) -> str:
    return _parse_cap_time(sent).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def alert_identity(sender: str, identifier: str, sent: str) -> str:
    """CAP identity (§3.2.1: sender, identifier, sent) as 24 hex digits of SHA-256 over
    ``sender\\nidentifier\\n<sent in UTC, YYYY-MM-DDTHH:MM:SSZ>``, so every spelling of the same
    instant names the same alert."""
    digest = hashlib.sha256(f"{sender}\n{identifier}\n{_utc_text(sent)}".encode()).hexdigest()
    return digest[:_ID_HEX]


# --------------------------------------------------------------------------- the model (wire format)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Reference(_Frozen):
    """One earlier message named in `references` (CAP 1.2 §3.2.1): sender,identifier,sent."""

    sender: str
    identifier: str
    sent: str

    @field_validator("sent")
    @classmethod
    def _sent_has_zone(cls, value: str) -> str:
        _parse_cap_time(value)
        return value

    @property
    def alert_id(self) -> str:
        return alert_identity(self.sender, self.identifier, self.sent)


class NameValue(_Frozen):
    """A valueName/value pair: eventCode, parameter and geocode (CAP 1.2 §3.2.2, §3.2.4)."""

    name: str
    value: str


Geocode = NameValue


class Circle(_Frozen):
    """CAP 1.2 §3.2.4 circle: WGS 84 centre and a radius in kilometres."""

    lat: float
    lon: float
    radius_km: float


class Area(_Frozen):
    """CAP 1.2 §3.2.4 area. Polygons are closed rings of (lat, lon) pairs."""

    description: str
    polygons: list[list[tuple[float, float]]] = Field(default_factory=list)
    circles: list[Circle] = Field(default_factory=list)
    geocodes: list[Geocode] = Field(default_factory=list)
    altitude: float | None = None
    ceiling: float | None = None


class Info(_Frozen):
    """CAP 1.2 §3.2.2 info (resources are not carried to the gateways)."""

    language: str = "en-US"
    categories: list[str] = Field(min_length=1)
    event: str
    response_types: list[str] = Field(default_factory=list)
    urgency: str
    severity: str
    certainty: str
    audience: str | None = None
    event_codes: list[NameValue] = Field(default_factory=list)
    effective: str | None = None
    onset: str | None = None
    expires: str | None = None
    sender_name: str | None = None
    headline: str | None = None
    description: str | None = None
    instruction: str | None = None
    web: str | None = None
    contact: str | None = None
    parameters: list[NameValue] = Field(default_factory=list)
    areas: list[Area] = Field(default_factory=list)

    @field_validator("effective", "onset", "expires")
    @classmethod
    def _times_have_zone(cls, value: str | None) -> str | None:
        if value is not None:
            _parse_cap_time(value)
        return value


class Alert(_Frozen):
    """CAP 1.2 §3.2.1 alert, normalized. Identity is (sender, identifier, sent) → `alert_id`."""

    sender: str
    identifier: str
    sent: str
    status: Status
    msg_type: MsgType
    scope: Scope
    source: str | None = None
    restriction: str | None = None
    addresses: str | None = None
    codes: list[str] = Field(default_factory=list)
    note: str | None = None
    references: list[Reference] = Field(default_factory=list)
    incidents: list[str] = Field(default_factory=list)
    infos: list[Info] = Field(default_factory=list)

    @field_validator("sent")
    @classmethod
    def _sent_has_zone(cls, value: str) -> str:
        _parse_cap_time(value)
        return value

    @property
    def alert_id(self) -> str:
        return alert_identity(self.sender, self.identifier, self.sent)


def sent_utc(alert: Alert) -> datetime:
    """When the alert was sent, in UTC."""
    return _parse_cap_time(alert.sent).astimezone(UTC)


def expires_utc(info: Info) -> datetime | None:
    """When this info stops being in force (CAP 1.2 §3.2.2 expires), in UTC; None if open-ended."""
    return None if info.expires is None else _parse_cap_time(info.expires).astimezone(UTC)


# --------------------------------------------------------------------------- priority, regions, language

_SEVERITY_LEVEL = {"Extreme": 1, "Severe": 2, "Moderate": 3, "Minor": 4, "Unknown": 4}
_COLOUR_TEXT = re.compile(r"(红|橙|黄|蓝)色预警")
_COLOUR_LEVEL = {"红": 1, "橙": 2, "黄": 3, "蓝": 4}
# Parameter names that carry a warning colour or level; compared case-insensitively on the part
# after the last ":" (so ECCC's "layer:EC-MSC-SMC:1.1:Colour" counts).
_LEVEL_PARAMETERS = frozenset(
    {"预警级别", "预警等级", "预警颜色", "alertcolor", "alertcolour", "colour", "color", "awareness_level"}
)
# Checked in order: the first word found in a parameter value decides.
_LEVEL_WORDS: tuple[tuple[str, int], ...] = (
    ("特别重大", 1), ("红", 1), ("red", 1), ("iv级", 4), ("ⅳ级", 4), ("iii级", 3), ("ⅲ级", 3),
    ("ii级", 2), ("ⅱ级", 2), ("i级", 1), ("ⅰ级", 1), ("重大", 2), ("橙", 2), ("orange", 2),
    ("较大", 3), ("黄", 3), ("yellow", 3), ("一般", 4), ("蓝", 4), ("blue", 4),
)  # fmt: skip


# Traditional characters of the level words (Hong Kong, Taiwan and Macao warnings write 紅色預警,
# 黃色, 藍色, 特別重大, 較大, IV級), read as their simplified forms.
_SIMPLIFIED = str.maketrans("紅黃藍別較級預", "红黄蓝别较级预")


def _colour_level(info: Info) -> int | None:
    for parameter in info.parameters:
        name = parameter.name.translate(_SIMPLIFIED).rsplit(":", 1)[-1].strip().casefold()
        if name in _LEVEL_PARAMETERS:
            value = parameter.value.translate(_SIMPLIFIED).casefold()
            for word, level in _LEVEL_WORDS:
                if word in value:
                    return level
    for text in (info.headline, info.event):
        m = _COLOUR_TEXT.search((text or "").translate(_SIMPLIFIED))
        if m:
            return _COLOUR_LEVEL[m.group(1)]
    return None


def priority(alert: Alert) -> int:
    """Chinese warning level 1..4 (1 特别重大/红, 2 重大/橙, 3 较大/黄, 4 一般/蓝) for display and
    speech.

    Rule: infos with urgency ``Past`` describe something already over and never raise the
    priority, so they are set aside; an alert with no other info (all Past, or a Cancel with none)
    is 4. Of the rest, the info with the highest CAP severity (§3.2.2; the first in document order
    on a tie) decides: Extreme → 1, Severe → 2, Moderate → 3, Minor and Unknown → 4 - unless that
    info names a colour level, which then wins in either direction: a parameter named 预警级别,
    预警等级, 预警颜色, AlertColor, Colour/Color or awareness_level whose value says 红/red/I级/特别重大,
    橙/orange/II级/重大, 黄/yellow/III级/较大 or 蓝/blue/IV级/一般; failing that, 红色预警, 橙色预警,
    黄色预警 or 蓝色预警 in its headline, then in its event. Traditional characters count as their
    simplified forms (紅色預警 is 红色预警).
    """
    current = [info for info in alert.infos if info.urgency != "Past"]
    if not current:
        return 4
    top = min(current, key=lambda info: _SEVERITY_LEVEL.get(info.severity, 4))
    colour = _colour_level(top)
    return colour if colour is not None else _SEVERITY_LEVEL.get(top.severity, 4)


REGION_GEOCODE_NAMES = frozenset(
    name.casefold()
    for name in (
        "行政区划代码",
        "行政区划",
        "GB/T 2260",
        "GB/T2260",
        "GB2260",
        "ADCODE",
        "areaCode",
        "area_code",
    )
)
_REGION_LENGTHS = (2, 4, 6, 9, 12)  # province, city, county, town, village (GB/T 2260, GB/T 10114)


def _normalize_region(value: str) -> str | None:
    """Trim the zero padding that stands for "the whole of": 210100 → 2101, 210102000000 → 210102."""
    code = value.strip()
    if not code.isascii() or not code.isdigit() or len(code) not in _REGION_LENGTHS or code.startswith("00"):
        return None
    while len(code) > 2:
        shorter = _REGION_LENGTHS[_REGION_LENGTHS.index(len(code)) - 1]
        if set(code[shorter:]) != {"0"}:
            break
        code = code[:shorter]
    return code


def regions(alert: Alert) -> list[str]:
    """行政区划代码 targeted by the alert, de-duplicated, in document order.

    Taken from area geocodes whose valueName is, case-insensitively, one of 行政区划代码, 行政区划,
    GB/T 2260, GB/T2260, GB2260, ADCODE, areaCode or area_code (`REGION_GEOCODE_NAMES`), and whose
    value is 2, 4, 6, 9 or 12 ASCII digits not starting with 00. Zero padding is trimmed to the
    level it stands for (210000 → 21, 210100 → 2101, 210102000000 → 210102), matching the
    `bfy/v1/region/<code>/alert` topic prefixes gateways subscribe to. Other values are ignored.
    """
    seen: dict[str, None] = {}
    for info in alert.infos:
        for area in info.areas:
            for geocode in area.geocodes:
                if geocode.name.strip().casefold() in REGION_GEOCODE_NAMES:
                    code = _normalize_region(geocode.value)
                    if code is not None:
                        seen.setdefault(code, None)
    return list(seen)


def lang_order(alert: Alert, preferred: str = "zh-CN") -> list[Info]:
    """Infos in the household's language first: an exact tag match (case-insensitive), then the
    same primary language ("zh" matches "zh-CN" and "zh-TW"), then the rest; stable within each."""
    wanted = preferred.strip().casefold()
    primary = wanted.split("-", 1)[0]

    def rank(info: Info) -> int:
        tag = info.language.strip().casefold()
        if tag == wanted:
            return 0
        return 1 if tag.split("-", 1)[0] == primary else 2

    return sorted(alert.infos, key=rank)


# --------------------------------------------------------------------------- data-dictionary rules


def _numbered(name: str, index: int, count: int) -> str:
    return f"{name}[{index + 1}]" if count > 1 else name


def _ring_problems(path: str, ring: Sequence[tuple[float, float]]) -> list[str]:
    problems: list[str] = []
    if len(ring) < 4:
        problems.append(f"{path}: a polygon needs at least 4 points, got {len(ring)} (CAP 1.2 §3.2.4)")
    elif ring[0] != ring[-1]:
        problems.append(f"{path}: ring is not closed (the first and last points must be equal)")
    for lat, lon in ring:
        point = _point_problems(path, lat, lon)
        if point:
            problems.append(point)
            break  # one bad point is enough to say; a ring of them would flood the reasons
    return problems


def _point_problems(path: str, lat: float, lon: float) -> str:
    if not (math.isfinite(lat) and -90.0 <= lat <= 90.0):
        return f"{path}: latitude {lat} is outside -90..90"
    if not (math.isfinite(lon) and -180.0 <= lon <= 180.0):
        return f"{path}: longitude {lon} is outside -180..180"
    return ""


def _enum_problem(path: str, value: str, allowed: Sequence[str]) -> list[str]:
    if value in allowed:
        return []
    return [f"{path}: {value!r} is not one of {', '.join(allowed)}"]


def _time_order(path: str, value: str | None, sent: datetime | None) -> list[str]:
    if value is None or sent is None:
        return []
    try:
        when = _parse_cap_time(value)
    except ValueError as exc:
        return [f"{path}: {exc}"]
    return [f"{path}: {value} is before the alert was sent"] if when < sent else []


def alert_problems(alert: Alert) -> list[str]:
    """The CAP 1.2 data-dictionary rules (§3.2) that the XML schema cannot express; [] if none.

    Applied to XML and JSON input alike; the gateway may call it again on a received alert.
    """
    problems: list[str] = []
    for field in ("sender", "identifier"):
        value: str = getattr(alert, field)
        if not value:
            problems.append(f"alert/{field}: must not be empty (CAP 1.2 §3.2.1)")
        elif _ID_FORBIDDEN.search(value):
            problems.append(f"alert/{field}: must not contain spaces, commas, '<' or '&' (CAP 1.2 §3.2.1)")
    try:
        sent: datetime | None = _parse_cap_time(alert.sent)
    except ValueError as exc:
        sent = None
        problems.append(f"alert/sent: {exc}")
    if alert.scope == "Restricted" and not (alert.restriction or "").strip():
        problems.append("alert/restriction: required when scope is Restricted (CAP 1.2 §3.2.1)")
    if alert.scope == "Private" and not (alert.addresses or "").strip():
        problems.append("alert/addresses: required when scope is Private (CAP 1.2 §3.2.1)")
    if alert.msg_type in ("Update", "Cancel") and not alert.references:
        problems.append(f"alert/references: required when msgType is {alert.msg_type} (CAP 1.2 §3.2.1)")
    for n, ref in enumerate(alert.references):
        path = f"alert/references[{n + 1}]"
        if not ref.sender or _ID_FORBIDDEN.search(ref.sender):
            problems.append(f"{path}: sender {ref.sender!r} is empty or has spaces, commas, '<' or '&'")
        if not ref.identifier or _ID_FORBIDDEN.search(ref.identifier):
            problems.append(
                f"{path}: identifier {ref.identifier!r} is empty or has spaces, commas, '<' or '&'"
            )
        try:
            _parse_cap_time(ref.sent)
        except ValueError as exc:
            problems.append(f"{path}: {exc}")
    if alert.msg_type in ("Alert", "Update") and not alert.infos:
        problems.append(f"alert/info: an {alert.msg_type} needs at least one info block (CAP 1.2 §3.2.2)")
    for i, info in enumerate(alert.infos):
        base = f"alert/info[{i + 1}]"
        if not _LANGUAGE.fullmatch(info.language):
            problems.append(f"{base}/language: {info.language!r} is not an RFC 3066 language tag")
        for category in info.categories:
            problems += _enum_problem(f"{base}/category", category, _CATEGORIES)
        for response in info.response_types:
            problems += _enum_problem(f"{base}/responseType", response, _RESPONSE_TYPES)
        problems += _enum_problem(f"{base}/urgency", info.urgency, _URGENCIES)
        problems += _enum_problem(f"{base}/severity", info.severity, _SEVERITIES)
        problems += _enum_problem(f"{base}/certainty", info.certainty, _CERTAINTIES)
        for name in ("effective", "onset"):
            value = getattr(info, name)
            if value is not None:
                try:
                    _parse_cap_time(value)
                except ValueError as exc:
                    problems.append(f"{base}/{name}: {exc}")
        problems += _time_order(f"{base}/expires", info.expires, sent)
        for j, area in enumerate(info.areas):
            apath = f"{base}/area[{j + 1}]"
            for k, ring in enumerate(area.polygons):
                problems += _ring_problems(f"{apath}/{_numbered('polygon', k, len(area.polygons))}", ring)
            for k, circle in enumerate(area.circles):
                cpath = f"{apath}/{_numbered('circle', k, len(area.circles))}"
                point = _point_problems(cpath, circle.lat, circle.lon)
                if point:
                    problems.append(point)
                if not (math.isfinite(circle.radius_km) and circle.radius_km >= 0):
                    problems.append(f"{cpath}: radius {circle.radius_km} km must be zero or more")
            if area.ceiling is not None and area.altitude is None:
                problems.append(f"{apath}/ceiling: may only be given with an altitude (CAP 1.2 §3.2.4)")
    return problems


# --------------------------------------------------------------------------- pydantic errors → reasons

_CAP_NAMES = {
    "infos": "info",
    "areas": "area",
    "polygons": "polygon",
    "circles": "circle",
    "geocodes": "geocode",
    "event_codes": "eventCode",
    "parameters": "parameter",
    "categories": "category",
    "response_types": "responseType",
    "codes": "code",
    "msg_type": "msgType",
    "sender_name": "senderName",
}


def _validation_reasons(exc: ValidationError) -> list[str]:
    reasons = []
    for error in exc.errors(include_url=False):
        parts = ["alert"]
        for item in error["loc"]:
            if isinstance(item, int):
                parts[-1] += f"[{item + 1}]"
            else:
                name = str(item)
                parts.append(_CAP_NAMES.get(name, name))
        if len(parts) > 1 and parts[-1] == "description" and parts[-2].startswith("area"):
            parts[-1] = "areaDesc"
        message = str(error["msg"]).removeprefix("Value error, ")
        reasons.append(f"{'/'.join(parts)}: {message}")
    return reasons


def _build(data: Mapping[str, Any], extra: list[str]) -> Alert:
    """Model + dictionary rules; raises CapError with `extra` reasons prepended."""
    try:
        alert = Alert.model_validate(data)
    except ValidationError as exc:
        raise CapError(extra + _validation_reasons(exc)) from exc
    problems = extra + alert_problems(alert)
    if problems:
        raise CapError(problems)
    return alert


# --------------------------------------------------------------------------- JSON


def parse_cap_json(data: bytes | Mapping[str, Any], *, max_bytes: int = MAX_CAP_BYTES) -> Alert:
    """A CAP alert as JSON (the model's snake_case field names) → Alert; CapError otherwise."""
    if isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        if len(raw) > max_bytes:
            raise CapError([f"body is {len(raw)} bytes; the limit is {max_bytes}"])
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise CapError([f"body is not valid UTF-8 JSON ({type(exc).__name__})"]) from exc
    else:
        obj = data
    if not isinstance(obj, Mapping):
        raise CapError(["alert: a JSON object is required"])
    try:
        return _build(obj, [])
    except RecursionError as exc:
        raise CapError(["alert: nested too deeply"]) from exc


# --------------------------------------------------------------------------- XML


_schema_lock = threading.Lock()


def _hardened_parser() -> Any:
    # A fresh parser per document: lxml parsers keep state and are not shared across threads.
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
        collect_ids=False,
    )


@cache
def _schema() -> Any:
    """The packaged OASIS CAP 1.2 schema, loaded once (lazily, so importing has no I/O)."""
    text = resources.files("cloud_bridge").joinpath(_SCHEMA_RESOURCE).read_bytes()
    return etree.XMLSchema(etree.fromstring(text, _hardened_parser()))


def _local(tag: object) -> str:
    return tag.split("}", 1)[-1] if isinstance(tag, str) else "?"


def _element_path(el: Any) -> str:
    """alert/info[2]/area[1]/polygon - info and area always numbered, others when repeated."""
    parts: list[str] = []
    while el is not None:
        parent = el.getparent()
        name = _local(el.tag)
        if parent is not None:
            same = [sib for sib in parent if sib.tag == el.tag]
            if name in ("info", "area") or len(same) > 1:
                name += f"[{same.index(el) + 1}]"
        parts.append(name)
        el = parent
    return "/".join(reversed(parts))


_SCHEMA_ELEMENT = re.compile(r"^Element '(?:\{[^}]*\})?([^']+)'")


def _schema_error_element(root: Any, entry: Any) -> Any | None:
    """The element a libxml2 schema error is about: by its XPath, else by line and name."""
    nsmap = {k: v for k, v in root.nsmap.items() if k}
    try:
        found = root.getroottree().xpath(entry.path, namespaces=nsmap) if entry.path else None
    except etree.LxmlError:
        found = None
    if isinstance(found, list) and found and etree.iselement(found[0]):
        return found[0]
    named = _SCHEMA_ELEMENT.match(str(entry.message))
    for el in root.iter():
        if el.sourceline == entry.line and (named is None or _local(el.tag) == named.group(1)):
            return el
    return None


def _schema_reasons(root: Any, log: Iterable[Any]) -> list[str]:
    reasons = []
    for entry in log:
        message = str(entry.message).replace(_NS, "").replace("{" + XMLDSIG_NAMESPACE + "}", "ds:")
        el = _schema_error_element(root, entry)
        path = _element_path(el) if el is not None else "alert"
        reasons.append(f"{path} (line {entry.line}): {message} [CAP 1.2 schema]")
    return reasons


def _text(el: Any) -> str:
    return "".join(el.itertext())


def _optional(el: Any | None) -> str | None:
    if el is None:
        return None
    value = _text(el)
    return value if value.strip() else None


def _number(text: str) -> float | None:
    return float(text) if _NUMBER.fullmatch(text) else None


def _parse_polygon(path: str, text: str, problems: list[str]) -> list[tuple[float, float]] | None:
    ring: list[tuple[float, float]] = []
    for n, pair in enumerate(text.split()):
        parts = pair.split(",")
        lat = _number(parts[0]) if len(parts) == 2 else None
        lon = _number(parts[1]) if len(parts) == 2 else None
        if lat is None or lon is None:
            problems.append(f"{path}: point {n + 1} {pair[:40]!r} is not 'latitude,longitude'")
            return None
        ring.append((lat, lon))
    return ring


def _parse_circle(path: str, text: str, problems: list[str]) -> dict[str, float] | None:
    fields = text.split()
    if len(fields) == 2:
        centre = fields[0].split(",")
        if len(centre) == 2:
            lat, lon, radius = _number(centre[0]), _number(centre[1]), _number(fields[1])
            if lat is not None and lon is not None and radius is not None:
                return {"lat": lat, "lon": lon, "radius_km": radius}
    problems.append(f"{path}: {text.strip()[:60]!r} is not 'latitude,longitude radius' (CAP 1.2 §3.2.4)")
    return None


def _parse_references(text: str, problems: list[str]) -> list[dict[str, str]]:
    refs = []
    for n, triple in enumerate(text.split()):
        parts = triple.split(",")
        if len(parts) != 3 or not all(parts):
            problems.append(
                f"alert/references: entry {n + 1} {triple[:80]!r} is not a sender,identifier,sent triple"
            )
            continue
        sender, identifier, sent = parts
        if sent.endswith("Z"):
            problems.append(
                f"alert/references: entry {n + 1} spells UTC as Z; CAP 1.2 §3.3.2 requires -00:00"
            )
            continue
        try:
            _parse_cap_time(sent)
        except ValueError as exc:
            problems.append(f"alert/references: entry {n + 1}: {exc}")
            continue
        refs.append({"sender": sender, "identifier": identifier, "sent": sent})
    return refs


def _pairs(parent: Any, name: str) -> Iterator[dict[str, str]]:
    for el in parent.iterchildren(_NS + name):
        yield {"name": _text(el.find(_NS + "valueName")), "value": _text(el.find(_NS + "value"))}


def _area(el: Any, path: str, problems: list[str]) -> dict[str, Any]:
    polygons_el = list(el.iterchildren(_NS + "polygon"))
    circles_el = list(el.iterchildren(_NS + "circle"))
    polygons = []
    for k, poly in enumerate(polygons_el):
        ring = _parse_polygon(f"{path}/{_numbered('polygon', k, len(polygons_el))}", _text(poly), problems)
        if ring is not None:
            polygons.append(ring)
    circles = []
    for k, circ in enumerate(circles_el):
        circle = _parse_circle(f"{path}/{_numbered('circle', k, len(circles_el))}", _text(circ), problems)
        if circle is not None:
            circles.append(circle)
    area: dict[str, Any] = {
        "description": _text(el.find(_NS + "areaDesc")),
        "polygons": polygons,
        "circles": circles,
        "geocodes": list(_pairs(el, "geocode")),
    }
    for name in ("altitude", "ceiling"):
        found = el.find(_NS + name)
        if found is not None:
            value = _number(_text(found).strip())
            if value is None:
                problems.append(f"{path}/{name}: {_text(found).strip()[:40]!r} is not a number")
            else:
                area[name] = value
    return area


_INFO_TEXT = {
    "audience": "audience",
    "effective": "effective",
    "onset": "onset",
    "expires": "expires",
    "senderName": "sender_name",
    "headline": "headline",
    "description": "description",
    "instruction": "instruction",
    "web": "web",
    "contact": "contact",
}
_ALERT_TEXT = {"source": "source", "restriction": "restriction", "addresses": "addresses", "note": "note"}


def _info(el: Any, path: str, problems: list[str]) -> dict[str, Any]:
    info: dict[str, Any] = {
        "categories": [_text(c).strip() for c in el.iterchildren(_NS + "category")],
        "event": _text(el.find(_NS + "event")),
        "response_types": [_text(c).strip() for c in el.iterchildren(_NS + "responseType")],
        "urgency": _text(el.find(_NS + "urgency")).strip(),
        "severity": _text(el.find(_NS + "severity")).strip(),
        "certainty": _text(el.find(_NS + "certainty")).strip(),
        "event_codes": list(_pairs(el, "eventCode")),
        "parameters": list(_pairs(el, "parameter")),
        "areas": [
            _area(area, f"{path}/area[{j + 1}]", problems)
            for j, area in enumerate(el.iterchildren(_NS + "area"))
        ],
    }
    language = el.find(_NS + "language")
    if language is not None:
        info["language"] = _text(language).strip()
    for tag, key in _INFO_TEXT.items():
        value = _optional(el.find(_NS + tag))
        if value is not None:
            info[key] = value.strip() if key in ("effective", "onset", "expires", "web") else value
    return info


def _alert_data(root: Any, problems: list[str]) -> dict[str, Any]:
    data: dict[str, Any] = {
        "identifier": _text(root.find(_NS + "identifier")),
        "sender": _text(root.find(_NS + "sender")),
        "sent": _text(root.find(_NS + "sent")).strip(),
        "status": _text(root.find(_NS + "status")).strip(),
        "msg_type": _text(root.find(_NS + "msgType")).strip(),
        "scope": _text(root.find(_NS + "scope")).strip(),
        "codes": [_text(c) for c in root.iterchildren(_NS + "code")],
        "infos": [
            _info(info, f"alert/info[{i + 1}]", problems)
            for i, info in enumerate(root.iterchildren(_NS + "info"))
        ],
    }
    for tag, key in _ALERT_TEXT.items():
        value = _optional(root.find(_NS + tag))
        if value is not None:
            data[key] = value
    references = _optional(root.find(_NS + "references"))
    if references is not None:
        data["references"] = _parse_references(references, problems)
    incidents = _optional(root.find(_NS + "incidents"))
    if incidents is not None:
        data["incidents"] = [q or w for q, w in _QUOTED_OR_WORD.findall(incidents)]
    return data


def _xml_tree(data: bytes) -> Any:
    """Well-formed, DTD-free XML → lxml root element; CapError otherwise."""
    try:
        _defused_et.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise CapError(
            [f"document type declarations and entities are not accepted ({type(exc).__name__})"]
        ) from exc
    except (_ExpatParseError, ValueError, LookupError) as exc:
        raise CapError([f"not well-formed XML: {str(exc)[:200]}"]) from exc
    try:
        root = etree.fromstring(data, _hardened_parser())
    except (etree.LxmlError, ValueError, LookupError) as exc:
        raise CapError([f"not well-formed XML: {str(exc)[:200]}"]) from exc
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise CapError(["document type declarations and entities are not accepted"])
    return root


def parse_cap_xml(data: bytes, *, max_bytes: int = MAX_CAP_BYTES) -> Alert:
    """A CAP 1.2 XML document → Alert, after the size bound, the DTD/entity refusal, the official
    schema and the data-dictionary rules (CAP 1.2 §3); CapError with every reason otherwise."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CapError([f"expected bytes, got {type(data).__name__}"])
    if len(data) > max_bytes:
        raise CapError([f"body is {len(data)} bytes; the limit is {max_bytes}"])
    raw = bytes(data)
    root = _xml_tree(raw)
    if root.tag != _NS + "alert":
        raise CapError(
            [f"{_local(root.tag)}: the root element must be <alert> in {CAP_NAMESPACE} (CAP 1.2 §3.3.1)"]
        )
    schema = _schema()
    with _schema_lock:
        valid = schema.validate(root)
        log = list(schema.error_log)
    if not valid:
        raise CapError(_schema_reasons(root, log) or ["does not match the CAP 1.2 schema"])
    problems: list[str] = []
    fields = _alert_data(root, problems)
    return _build(fields, problems)
