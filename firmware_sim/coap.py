"""Simulated CoAP devices: constrained sensors, a light and a plug, as an LwM2M/IPSO device
exposes its object model over plain CoAP (RFC 7252). They know nothing of the gateway.

Each `CoapDevice` is one real CoAP server on its own IPv4 address (any of 127.0.0.0/8 in the
private namespace), UDP port 5683, plus a listener for multicast discovery. The contract the
gateway's CoAP adapter is written against:

Resource layout (object ids and resource ids from the OMA LwM2M registry, OMNA):
- `/3/0` LwM2M Device: 0 Manufacturer, 1 Model Number, 2 Serial Number, 3 Firmware Version,
  6/0 Available Power Sources (1 battery, 6 mains), 9 Battery Level (battery kinds only),
  11/0 Error Code (0), 13 Current Time (Unix s), 14 UTC Offset, 15 Timezone,
  16 Supported Binding ("U"), 17 Device Type, 18 Hardware Version, 19 Software Version, and
  **5750 = the device's user-given name** (e.g. "卧室温湿度"). The Device object has no name
  resource; the simulator borrows IPSO's reusable resource 5750 "Application Type" for it,
  because on 3200 the same resource already says *what* the input is ("smoke", "door").
- climate: `/3303/0` Temperature and `/3304/0` Humidity: 5700 value (`u` "Cel" / "%RH"),
  5701 units, 5601/5602 min/max measured, 5603/5604 range; POST 5605 resets min/max.
- smoke, door: `/3200/0` Digital Input: 5500 state (door: true = closed), 5501 counter,
  5750 "smoke" / "door", 5751 sensor type; POST 5505 resets the counter.
- motion: `/3302/0` Presence: 5500, 5501, 5751 "PIR", 5903/5904 delays in ms (writable).
- light: `/3311/0` Light Control: 5850 on/off (writable), 5851 dimmer 0-100 (writable),
  5852 on time s (writable, 0 resets), 5805 energy Wh, 5820 power factor.
- plug: `/3312/0` Power Control: 5850 on/off, 5852 on time; `/3305/0` Power Measurement:
  5800 active power W (the registry's resource for it; 5700 is not in 3305), 5801/5802
  min/max, 5805 energy Wh, 5820 power factor; POST 5605 / 5822 reset min-max / energy.
- `/.well-known/core` (RFC 6690) lists the object instances only, `/3/0` first, each as
  `</3303/0>;rt="urn:oma:lwm2m:ext:3303";ct="110 112";obs`. `rt` is the object's ObjectURN
  in the LwM2M registry: `urn:oma:lwm2m:oma:3` for Device (v1.0 has no version suffix) and
  `urn:oma:lwm2m:ext:<id>` for the IPSO objects (3200 3302 3303 3304 3305 3311 3312).
  Resource-level URIs exist but are not listed.

Representations: GET on an instance or resource answers SenML (RFC 8428) per the Accept
option, JSON (110, the default) or CBOR (112); single resources also text/plain (0). A pack
is `[{"bn":"/3303/0/","bt":<unix s>,"n":"5700","v":21.5,"u":"Cel"},{"n":"5701","vs":"Cel"},
...]`: numbers in `v`, strings in `vs`, booleans in `vb`, always `bn` = the instance path with
a trailing slash and `n` = the resource id (or "id/instance" for multiple-instance resources),
also for a single resource. Everything readable is observable (RFC 7641); notifications go
out on every change and at least every `report_interval_s`, with Max-Age a little longer.

Writes: PUT or POST a SenML pack (110/112) to an instance, `n` relative to it (a `bn` giving
the full path works too), e.g. `[{"n":"5850","vb":true},{"n":"5851","v":40}]`; or PUT a single
resource as text/plain ("1", "0", "true", "false", or a number) or SenML. All records are
checked before any is applied. Errors: 4.00 bad value, 4.04 no such resource, 4.05 not
writable, 4.06 unsupported Accept, 4.15 unsupported Content-Format, with a diagnostic payload.
`POST /sim/test` (unlisted) is the simulator's test button: "smoke"/"clear", "open"/"closed",
"motion"/"still"; `CoapDevice.set_input()` does the same from Python.

Multicast discovery (RFC 7252 §8, §12.8): GET `/.well-known/core` to 224.0.1.187:5683 is
answered by every device, from its own address and port 5683, after a random leisure; an
`rt=`/`href=`/`ct=` query filters (RFC 6690 §4.1) and no match means no answer. ff02::fd is
joined only where the interface has a link-local IPv6 address (never on `lo`).

`HostileCoapDevice` misbehaves on purpose for hostile-LAN tests; see its docstring.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import json
import logging
import math
import random
import socket
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias, get_args

import aiocoap  # type: ignore[import-untyped, unused-ignore]
import aiocoap.error  # type: ignore[import-untyped, unused-ignore]
import aiocoap.optiontypes  # type: ignore[import-untyped, unused-ignore]
import aiocoap.resource  # type: ignore[import-untyped, unused-ignore]
import aiocoap.util.linkformat  # type: ignore[import-untyped, unused-ignore]
import cbor2
from aiocoap.numbers import ContentFormat  # type: ignore[import-untyped, unused-ignore]
from pydantic import BaseModel, ConfigDict, StrictBool, StrictFloat, StrictInt, StrictStr
from pydantic import ValidationError as _ValidationError

from firmware_sim._mqtt import FirmwareSimError, PeerComplaints

__all__ = [
    "ALL_COAP_NODES_V4",
    "ALL_COAP_NODES_V6",
    "COAP_KINDS",
    "COAP_PORT",
    "DEFAULT_REPORT_INTERVAL_S",
    "OBJECT_URNS",
    "CoapDevice",
    "CoapKind",
    "CoapSimError",
    "HostileCoapDevice",
    "SenmlEntry",
    "SenmlError",
    "SenmlRecord",
    "decode_senml",
    "run_coap_devices",
]

_log = logging.getLogger(__name__)

CoapKind: TypeAlias = Literal["climate", "smoke", "door", "motion", "light", "plug"]
COAP_KINDS: Final[tuple[CoapKind, ...]] = get_args(CoapKind)
Value: TypeAlias = bool | int | float | str

COAP_PORT: Final = 5683  # RFC 7252 §6.1 default port (IANA, §12.6)
ALL_COAP_NODES_V4: Final = "224.0.1.187"  # RFC 7252 §12.8
ALL_COAP_NODES_V6: Final = "ff02::fd"  # RFC 7252 §12.8, link-local scope
DEFAULT_REPORT_INTERVAL_S: Final = 5.0
# RFC 7252 §8.2: a server answering a multicast request waits a random time within Leisure
# (DEFAULT_LEISURE 5 s, §4.8) so that the answers do not collide; a LAN of a few simulated
# devices needs far less, and discovery should be quick.
MULTICAST_LEISURE_S: Final = 0.05
_BLOCK_SZX: Final = 6  # RFC 7959 §2.2: 1024 bytes, the largest block; aiocoap's default too
_MAX_DATAGRAM: Final = 65_535
_MAX_DATAGRAMS_PER_WAKEUP: Final = 64  # then yield to the loop
_MAX_PENDING_ANSWERS: Final = 64  # multicast answers waiting out their leisure; more are dropped
_IP_PKTINFO: Final = getattr(socket, "IP_PKTINFO", 8)  # <linux/in.h>; Python 3.11 lacks it
_IPV6_ADDR_LINKLOCAL: Final = 0x20  # scope column of /proc/net/if_inet6
_IFA_F_TENTATIVE: Final = 0x40  # an address still in duplicate address detection
_NO_RESPONSE_2XX: Final = 0x02  # RFC 7967 §2.1: suppress 2.xx responses
_SHUTDOWN_TIMEOUT_S: Final = 5.0
FORCED_HOLD_S: Final = 60.0  # a forced input (test button, set_input) is not undone by the sim

# Content-Formats (RFC 7252 §12.3, RFC 6690 §7.2, RFC 8428 §12.3). Note that aiocoap's
# ContentFormat.SENML is 112, the CBOR one; spell the numbers out.
CT_TEXT: Final = ContentFormat(0)
CT_LINK_FORMAT: Final = ContentFormat(40)
CT_SENML_JSON: Final = ContentFormat(110)
CT_SENML_CBOR: Final = ContentFormat(112)
_SENML_FORMATS: Final = (CT_SENML_JSON, CT_SENML_CBOR)
_INSTANCE_CT: Final = "110 112"

#: `rt` of each object instance: the ObjectURN in the OMA LwM2M registry (OMNA). OMA objects
#: are `urn:oma:lwm2m:oma:<id>`, IPSO (other SDO) objects `urn:oma:lwm2m:ext:<id>`; a
#: `:<version>` suffix is added only for object versions other than 1.0, and these are 1.0.
OBJECT_URNS: Final[Mapping[int, str]] = {
    3: "urn:oma:lwm2m:oma:3",
    3200: "urn:oma:lwm2m:ext:3200",
    3302: "urn:oma:lwm2m:ext:3302",
    3303: "urn:oma:lwm2m:ext:3303",
    3304: "urn:oma:lwm2m:ext:3304",
    3305: "urn:oma:lwm2m:ext:3305",
    3311: "urn:oma:lwm2m:ext:3311",
    3312: "urn:oma:lwm2m:ext:3312",
}

MANUFACTURER: Final = "Beifang Smart Home"
FIRMWARE_VERSION: Final = "1.4.2"
HARDWARE_VERSION: Final = "B2"
SOFTWARE_VERSION: Final = "lwm2m-sim 1.4"


@dataclass(frozen=True, slots=True)
class _Profile:
    model: str
    device_type: str
    battery: bool


_PROFILES: Final[Mapping[CoapKind, _Profile]] = {
    "climate": _Profile("BFY-TH10", "temperature-humidity sensor", battery=True),
    "smoke": _Profile("BFY-SD20", "smoke detector", battery=True),
    "door": _Profile("BFY-DS30", "door-window sensor", battery=True),
    "motion": _Profile("BFY-PIR40", "motion sensor", battery=True),
    "light": _Profile("BFY-LB50", "dimmable LED bulb", battery=False),
    "plug": _Profile("BFY-SP60", "smart plug", battery=False),
}

# The input object and the test-button words of each binary-input kind.
_INPUTS: Final[Mapping[CoapKind, tuple[str, Mapping[str, bool]]]] = {
    "smoke": ("/3200/0", {"smoke": True, "clear": False}),
    "door": ("/3200/0", {"closed": True, "open": False}),
    "motion": ("/3302/0", {"motion": True, "still": False}),
}

ValueType: TypeAlias = Literal["bool", "int", "float", "str"]


@dataclass(frozen=True, slots=True)
class _Res:
    """One resource (or resource instance, key "6/0") of an object instance."""

    key: str
    vtype: ValueType
    writable: bool = False
    unit: str | None = None  # SenML unit, RFC 8428 §12.1
    bounds: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class _Obj:
    """An object instance: its readable resources and its executable ones (POST)."""

    object_id: int
    resources: tuple[_Res, ...]
    executable: tuple[str, ...] = ()
    instance: int = 0

    @property
    def path(self) -> str:
        return f"/{self.object_id}/{self.instance}"


def _sensor(object_id: int, unit: str) -> _Obj:
    return _Obj(
        object_id,
        (
            _Res("5700", "float", unit=unit),
            _Res("5701", "str"),
            _Res("5601", "float", unit=unit),
            _Res("5602", "float", unit=unit),
            _Res("5603", "float", unit=unit),
            _Res("5604", "float", unit=unit),
        ),
        executable=("5605",),
    )


_DIGITAL_INPUT: Final = _Obj(
    3200,
    (_Res("5500", "bool"), _Res("5501", "int"), _Res("5750", "str"), _Res("5751", "str")),
    executable=("5505",),
)
_DELAY_MS: Final = (0, 3_600_000)
_INT32: Final = (0, 2**31 - 1)


def _objects(kind: CoapKind, *, battery: bool) -> tuple[_Obj, ...]:
    device = _Obj(
        3,
        tuple(
            _Res(key, vtype)
            for key, vtype in (
                ("0", "str"),
                ("1", "str"),
                ("2", "str"),
                ("3", "str"),
                ("6/0", "int"),
                *((("9", "int"),) if battery else ()),
                ("11/0", "int"),
                ("13", "int"),
                ("14", "str"),
                ("15", "str"),
                ("16", "str"),
                ("17", "str"),
                ("18", "str"),
                ("19", "str"),
                ("5750", "str"),
            )
        ),
    )
    match kind:
        case "climate":
            return device, _sensor(3303, "Cel"), _sensor(3304, "%RH")
        case "smoke" | "door":
            return device, _DIGITAL_INPUT
        case "motion":
            presence = _Obj(
                3302,
                (
                    _Res("5500", "bool"),
                    _Res("5501", "int"),
                    _Res("5751", "str"),
                    _Res("5903", "int", writable=True, bounds=_DELAY_MS),
                    _Res("5904", "int", writable=True, bounds=_DELAY_MS),
                ),
                executable=("5505",),
            )
            return device, presence
        case "light":
            light = _Obj(
                3311,
                (
                    _Res("5850", "bool", writable=True),
                    _Res("5851", "int", writable=True, bounds=(0, 100)),
                    _Res("5852", "int", writable=True, bounds=_INT32),
                    _Res("5805", "float"),
                    _Res("5820", "float"),
                ),
            )
            return device, light
        case "plug":
            control = _Obj(
                3312,
                (_Res("5850", "bool", writable=True), _Res("5852", "int", writable=True, bounds=_INT32)),
            )
            meter = _Obj(
                3305,
                (
                    _Res("5800", "float", unit="W"),
                    _Res("5801", "float", unit="W"),
                    _Res("5802", "float", unit="W"),
                    _Res("5805", "float"),
                    _Res("5820", "float"),
                ),
                executable=("5605", "5822"),
            )
            return device, control, meter


class CoapSimError(FirmwareSimError):
    """A CoAP simulator could not start or was used wrongly."""


# --- SenML (RFC 8428) -------------------------------------------------------------------------


class SenmlError(ValueError):
    """A payload that is not a usable SenML pack; the message says why."""


class SenmlRecord(BaseModel):
    """One SenML record as sent (RFC 8428 §4), before base values are resolved."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True, allow_inf_nan=False)

    bver: StrictInt | None = None
    bn: StrictStr | None = None
    bt: StrictInt | StrictFloat | None = None
    bu: StrictStr | None = None
    bv: StrictInt | StrictFloat | None = None
    n: StrictStr | None = None
    u: StrictStr | None = None
    v: StrictInt | StrictFloat | None = None
    vs: StrictStr | None = None
    vb: StrictBool | None = None
    t: StrictInt | StrictFloat | None = None


@dataclass(frozen=True, slots=True)
class SenmlEntry:
    """A resolved record (RFC 8428 §4.6): full name, value, and time if the pack gave one."""

    name: str
    value: Value
    time: float | None = None


# RFC 8428 §6, Table 4: CBOR labels.
_CBOR_LABELS: Final[Mapping[str, int]] = {
    "bver": -1,
    "bn": -2,
    "bt": -3,
    "bu": -4,
    "bv": -5,
    "bs": -6,
    "n": 0,
    "u": 1,
    "v": 2,
    "vs": 3,
    "vb": 4,
    "s": 5,
    "t": 6,
    "ut": 7,
    "vd": 8,
}
_CBOR_NAMES: Final[Mapping[int, str]] = {label: name for name, label in _CBOR_LABELS.items()}


def decode_senml(payload: bytes, content_format: int) -> list[SenmlEntry]:
    """Parse a SenML pack in JSON (110) or CBOR (112) and resolve its base values.

    Records with only base fields yield nothing. Raises `SenmlError` for anything else
    that is not valid SenML: bad encoding, wrong types, non-finite numbers, a record with
    several values or none, an unknown must-understand label (ending in "_", §4.4).
    """
    raw: object
    if content_format == CT_SENML_JSON:
        try:
            raw = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise SenmlError(f"not SenML JSON: {exc}") from exc
    elif content_format == CT_SENML_CBOR:
        try:
            raw = _cbor_labels_to_names(cbor2.loads(payload))
        except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError, OverflowError) as exc:
            raise SenmlError(f"not SenML CBOR: {exc}") from exc
    else:
        raise SenmlError(f"Content-Format {content_format} is not SenML (110 or 112)")
    if not isinstance(raw, list):
        raise SenmlError("a SenML pack is an array of records")
    records: list[SenmlRecord] = []
    for index, item in enumerate(raw):
        try:
            records.append(SenmlRecord.model_validate(item))
        except _ValidationError as exc:
            fields = sorted({str(e["loc"][0]) for e in exc.errors() if e["loc"]})
            what = ", ".join(fields) if fields else "not a map"
            raise SenmlError(f"record {index}: wrong type or non-finite value: {what}") from exc
    return _resolve(records)


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _cbor_labels_to_names(raw: object) -> object:
    if not isinstance(raw, list):
        return raw
    out: list[object] = []
    for item in raw:
        if not isinstance(item, dict):
            out.append(item)
            continue
        record: dict[str, object] = {}
        for key, value in item.items():
            if isinstance(key, int) and not isinstance(key, bool):
                if key not in _CBOR_NAMES:
                    raise ValueError(f"unknown SenML CBOR label {key}")
                record[_CBOR_NAMES[key]] = value
            elif isinstance(key, str):
                record[key] = value
            else:
                raise TypeError(f"SenML CBOR label {key!r} is neither integer nor text")
        out.append(record)
    return out


def _resolve(records: Sequence[SenmlRecord]) -> list[SenmlEntry]:
    entries: list[SenmlEntry] = []
    base_name = ""
    base_time: float | None = None
    base_value: float | None = None
    for index, record in enumerate(records):
        unknown = [k for k in record.model_extra or {} if k.endswith("_")]
        if unknown:
            raise SenmlError(f"record {index}: must-understand label {unknown[0]!r}")
        if record.bn is not None:
            base_name = record.bn
        if record.bt is not None:
            base_time = float(record.bt)
        if record.bv is not None:
            base_value = float(record.bv)
        values: list[Value] = [x for x in (record.v, record.vs, record.vb) if x is not None]
        if len(values) > 1:
            raise SenmlError(f"record {index} has more than one value")
        if not values:
            if record.n is None:
                continue  # base fields only
            raise SenmlError(f"record {index} ({record.n!r}) has no value")
        value = values[0]
        if record.v is not None and base_value is not None:
            value = base_value + record.v
        name = base_name + (record.n or "")
        if not name:
            raise SenmlError(f"record {index} has no name")
        when = None if base_time is None and record.t is None else (base_time or 0.0) + (record.t or 0)
        entries.append(SenmlEntry(name=name, value=value, time=when))
    return entries


def _encode_pack(pack: Sequence[Mapping[str, Value]], content_format: int) -> bytes:
    if content_format == CT_SENML_CBOR:
        return cbor2.dumps([{_CBOR_LABELS[k]: v for k, v in record.items()} for record in pack])
    return json.dumps(pack, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


# --- the device model -------------------------------------------------------------------------


def _check_address(address: str) -> str:
    try:
        parsed = ipaddress.IPv4Address(address)
    except ValueError as exc:
        raise CoapSimError(f"a simulated CoAP device needs an IPv4 address, not {address!r}") from exc
    return str(parsed)


class CoapDevice:
    """One simulated constrained CoAP device (see the module docstring for its resources).

    `run()` serves until cancelled: an aiocoap server on `(address, 5683)`, a multicast
    discovery listener, and the simulation that moves values and notifies observers. The
    device can be run again after it stopped (a power cycle); its values persist.
    """

    def __init__(
        self,
        *,
        kind: CoapKind,
        address: str,
        serial: str,
        name: str,
        report_interval_s: float = DEFAULT_REPORT_INTERVAL_S,
        seed: int | None = None,
        multicast_interface: str = "lo",
    ) -> None:
        if kind not in COAP_KINDS:
            raise CoapSimError(f"unknown CoAP device kind {kind!r}; one of {', '.join(COAP_KINDS)}")
        if not serial:
            raise CoapSimError("a CoAP device needs a serial number")
        if not report_interval_s > 0:
            raise CoapSimError(f"report_interval_s must be positive, not {report_interval_s}")
        self._kind: CoapKind = kind
        self._address = _check_address(address)
        self._serial = serial
        self._name = name
        self._report_interval_s = report_interval_s
        # Max-Age a little beyond the report interval: a notification always comes first
        # (RFC 7641 §4.3.1).
        self._max_age_s = math.ceil(report_interval_s) + 1
        self._multicast_interface = multicast_interface
        # Simulated readings, not security; by default every serial behaves its own way.
        self._rng = random.Random(serial if seed is None else seed)
        self._profile = _PROFILES[kind]
        self._objects = _objects(kind, battery=self._profile.battery)
        self._specs: dict[str, _Res] = {
            f"{obj.path}/{res.key}": res for obj in self._objects for res in obj.resources
        }
        self._complaints = PeerComplaints(_log, f"coap {self._address}")
        self._values: dict[str, Value] = {}
        self._on_time_s: dict[str, float] = {}
        self._last_advance = time.monotonic()
        self._forced_until = 0.0
        self._init_values()
        self._instances: dict[str, _InstanceResource] = {}
        self._leaves: dict[str, _ValueResource] = {}
        self._site = self._build_site()
        self._running = False
        self._settled = asyncio.Event()
        self._failure: BaseException | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._kind} {self._serial} coap://{self._address}>"

    # -- public properties ---------------------------------------------------------------------

    @property
    def kind(self) -> CoapKind:
        return self._kind

    @property
    def address(self) -> str:
        return self._address

    @property
    def serial(self) -> str:
        return self._serial

    @property
    def name(self) -> str:
        return self._name

    @property
    def state(self) -> dict[str, Value]:
        """Current values by the gateway's capability names (DESIGN.md, Contract 1)."""
        self._advance()
        v = self._values
        state: dict[str, Value]
        match self._kind:
            case "climate":
                state = {"temperature": v["/3303/0/5700"], "humidity": v["/3304/0/5700"]}
            case "smoke":
                state = {"smoke": v["/3200/0/5500"]}
            case "door":
                state = {"contact": v["/3200/0/5500"]}
            case "motion":
                state = {"motion": v["/3302/0/5500"]}
            case "light":
                state = {"on": v["/3311/0/5850"], "brightness": v["/3311/0/5851"]}
            case "plug":
                energy_wh = float(v["/3305/0/5805"])
                state = {
                    "on": v["/3312/0/5850"],
                    "power": v["/3305/0/5800"],
                    "energy": round(energy_wh / 1000, 6),
                }
        if self._profile.battery:
            state["battery"] = v["/3/0/9"]
        return state

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until cancelled; closes the CoAP context and the sockets on the way out.

        Raises `CoapSimError` if the address cannot be bound or the multicast group joined
        (and `wait_ready()` raises it too), or if the device is already running.
        """
        if self._running:
            raise CoapSimError(f"{self!r} is already running")
        self._running = True
        self._failure = None
        self._settled.clear()
        try:
            async with contextlib.AsyncExitStack() as stack:
                context = await self._open_server()
                stack.push_async_callback(_shutdown, context)
                loop = asyncio.get_running_loop()
                for responder in self._open_responders(loop):
                    stack.callback(responder.close)
                    responder.start()
                self._settled.set()
                _log.info(
                    "coap %s ready: %s %s %r on coap://%s:%d",
                    self._address,
                    self._kind,
                    self._serial,
                    self._name,
                    self._address,
                    COAP_PORT,
                )
                async with asyncio.TaskGroup() as tg:
                    self._start_tasks(tg)
        except BaseException as exc:
            if not self._settled.is_set():
                self._failure = exc
                self._settled.set()
            raise
        finally:
            self._running = False
            if self._failure is None:
                self._settled.clear()  # stopped: wait_ready() waits for the next run

    async def wait_ready(self) -> None:
        """Return once the device answers on the network; raise `CoapSimError` if its
        `run()` failed to start."""
        await self._settled.wait()
        if self._failure is not None:
            raise CoapSimError(f"{self!r} did not start: {self._failure!r}") from self._failure

    async def _open_server(self) -> Any:
        # aiocoap binds with SO_REUSEPORT, so a second server on a busy address would start
        # and silently take a share of the requests; a plain bind first makes that an error.
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.bind((self._address, COAP_PORT))
        except OSError as exc:
            raise CoapSimError(f"cannot serve CoAP on {self._address}:{COAP_PORT}: {exc}") from exc
        finally:
            probe.close()
        try:
            return await aiocoap.Context.create_server_context(
                self._site,
                # udp6 resolves a bind address with its own routability check, which drops
                # 127.0.0.x where an interface has IPv6 but no IPv4 besides `lo`; the
                # v4-mapped literal is taken as it is.
                bind=(f"::ffff:{self._address}", COAP_PORT),
                transports=["udp6"],  # a constrained device speaks CoAP over UDP only
                loggername=f"{__name__}.stack",
            )
        except (OSError, aiocoap.error.ResolutionError) as exc:
            raise CoapSimError(f"cannot serve CoAP on {self._address}:{COAP_PORT}: {exc}") from exc

    def _start_tasks(self, tg: asyncio.TaskGroup) -> None:
        tg.create_task(self._simulate(), name=f"coap-sim-{self._serial}")

    # -- simulation ----------------------------------------------------------------------------

    def set_input(self, value: bool) -> None:
        """Force the binary input (smoke, door closed, motion) like the test button does;
        the simulation leaves it alone for `FORCED_HOLD_S` (smoke: until changed again)."""
        if self._kind not in _INPUTS:
            raise CoapSimError(f"a {self._kind} device has no binary input")
        self._forced_until = time.monotonic() + FORCED_HOLD_S
        self._set_input(bool(value))

    def _set_input(self, value: bool) -> None:
        instance = _INPUTS[self._kind][0]
        old = self._values[f"{instance}/5500"]
        self._values[f"{instance}/5500"] = value
        changed = {"5500"}
        if value and not old:
            self._values[f"{instance}/5501"] = int(self._values[f"{instance}/5501"]) + 1
            changed.add("5501")
        if value != old:
            _log.debug("coap %s: input %s -> %s", self._address, instance, value)
        self._notify(instance, changed)

    async def _simulate(self) -> None:
        while True:
            await asyncio.sleep(self._report_interval_s)
            self._advance()
            self._step()
            self._notify_all()

    def _init_values(self) -> None:
        rng = self._rng
        v = self._values
        profile = self._profile
        device = {
            "0": MANUFACTURER,
            "1": profile.model,
            "2": self._serial,
            "3": FIRMWARE_VERSION,
            "6/0": 1 if profile.battery else 6,  # 1 internal battery, 6 AC mains
            "11/0": 0,
            "13": int(time.time()),
            "14": "+08:00",
            "15": "Asia/Shanghai",
            "16": "U",
            "17": profile.device_type,
            "18": HARDWARE_VERSION,
            "19": SOFTWARE_VERSION,
            "5750": self._name,
        }
        if profile.battery:
            device["9"] = rng.randint(55, 100)
        v.update({f"/3/0/{k}": value for k, value in device.items()})
        match self._kind:
            case "climate":
                self._temperature_target = rng.uniform(20.5, 23.5)
                self._humidity_target = rng.uniform(38.0, 55.0)
                for obj, value, unit, lo, hi in (
                    (3303, self._temperature_target, "Cel", -40.0, 125.0),
                    (3304, self._humidity_target, "%RH", 0.0, 100.0),
                ):
                    x = round(value, 2)
                    p = f"/{obj}/0/"
                    v.update({p + "5700": x, p + "5701": unit, p + "5601": x, p + "5602": x})
                    v.update({p + "5603": lo, p + "5604": hi})
            case "smoke" | "door":
                sensor_type = "photoelectric" if self._kind == "smoke" else "reed switch"
                closed = self._kind == "door"
                v.update(
                    {
                        "/3200/0/5500": closed,
                        "/3200/0/5501": int(closed),
                        "/3200/0/5750": self._kind,
                        "/3200/0/5751": sensor_type,
                    }
                )
            case "motion":
                v.update(
                    {
                        "/3302/0/5500": False,
                        "/3302/0/5501": 0,
                        "/3302/0/5751": "PIR",
                        "/3302/0/5903": 30_000,
                        "/3302/0/5904": 0,
                    }
                )
            case "light":
                v.update(
                    {
                        "/3311/0/5850": False,
                        "/3311/0/5851": 100,
                        "/3311/0/5852": 0,
                        "/3311/0/5805": 0.0,
                        "/3311/0/5820": 0.9,
                    }
                )
                self._on_time_s["/3311/0"] = 0.0
            case "plug":
                self._load_w = rng.uniform(35.0, 120.0)
                v.update({"/3312/0/5850": False, "/3312/0/5852": 0})
                v.update(
                    {
                        "/3305/0/5800": 0.0,
                        "/3305/0/5801": 0.0,
                        "/3305/0/5802": 0.0,
                        "/3305/0/5805": 0.0,
                        "/3305/0/5820": 0.95,
                    }
                )
                self._on_time_s["/3312/0"] = 0.0

    def _power_w(self) -> float:
        """Instantaneous draw, for the energy counter."""
        v = self._values
        if self._kind == "light":
            return 9.0 * int(v["/3311/0/5851"]) / 100 if v["/3311/0/5850"] else 0.0
        if self._kind == "plug":
            return float(v["/3305/0/5800"])
        return 0.0

    def _advance(self) -> None:
        """Bring time-driven values (on time, energy, clock) up to now."""
        now = time.monotonic()
        elapsed = now - self._last_advance
        self._last_advance = now
        v = self._values
        v["/3/0/13"] = int(time.time())
        energy_key = {"light": "/3311/0/5805", "plug": "/3305/0/5805"}.get(self._kind)
        if energy_key is not None:
            v[energy_key] = round(float(v[energy_key]) + self._power_w() * elapsed / 3600, 4)
        for instance, on_time in self._on_time_s.items():
            if v[f"{instance}/5850"]:
                self._on_time_s[instance] = on_time + elapsed
            v[f"{instance}/5852"] = int(self._on_time_s[instance])

    def _step(self) -> None:
        """One report interval of simulated life."""
        rng = self._rng
        v = self._values
        forced = time.monotonic() < self._forced_until
        match self._kind:
            case "climate":
                self._temperature_target = min(25.0, max(19.0, self._temperature_target + rng.gauss(0, 0.05)))
                self._humidity_target = min(65.0, max(35.0, self._humidity_target + rng.gauss(0, 0.3)))
                for obj, target, sigma, lo, hi in (
                    (3303, self._temperature_target, 0.08, 18.0, 26.0),
                    (3304, self._humidity_target, 0.5, 30.0, 70.0),
                ):
                    p = f"/{obj}/0/"
                    x = float(v[p + "5700"])
                    x = round(min(hi, max(lo, x + 0.15 * (target - x) + rng.gauss(0, sigma))), 2)
                    v[p + "5700"] = x
                    v[p + "5601"] = min(float(v[p + "5601"]), x)
                    v[p + "5602"] = max(float(v[p + "5602"]), x)
            case "motion" if not forced:
                active = bool(v["/3302/0/5500"])
                if rng.random() < (0.35 if active else 0.08):
                    self._set_input(not active)
            case "door" if not forced:
                if rng.random() < 0.04:
                    self._set_input(not v["/3200/0/5500"])
            case "plug":
                power = self._load_w * (1 + rng.gauss(0, 0.02)) if v["/3312/0/5850"] else 0.0
                self._set_power(power)
            case _:
                pass  # smoke stays as it is unless triggered; a light only follows commands

    def _set_power(self, power_w: float) -> None:
        v = self._values
        power = round(max(0.0, power_w), 2)
        v["/3305/0/5800"] = power
        v["/3305/0/5801"] = min(float(v["/3305/0/5801"]), power)
        v["/3305/0/5802"] = max(float(v["/3305/0/5802"]), power)

    # -- reads and writes ----------------------------------------------------------------------

    def _pack(self, obj: _Obj, keys: Iterable[str]) -> list[dict[str, Value]]:
        self._advance()
        pack: list[dict[str, Value]] = []
        for key in keys:
            spec = self._specs[f"{obj.path}/{key}"]
            record: dict[str, Value] = {"n": key}
            value = self._values[f"{obj.path}/{key}"]
            record[{"bool": "vb", "str": "vs"}.get(spec.vtype, "v")] = value
            if spec.unit is not None:
                record["u"] = spec.unit
            pack.append(record)
        pack[0] = {"bn": f"{obj.path}/", "bt": round(time.time(), 3), **pack[0]}
        return pack

    def _write(self, values: Mapping[str, Value]) -> None:
        """Apply writes by full resource path, all or none; notify observers.

        Raises aiocoap's renderable errors (4.04, 4.05, 4.00) for the CoAP layer.
        """
        checked: dict[str, Value] = {}
        for path, value in values.items():
            spec = self._specs.get(path)
            if spec is None:
                raise aiocoap.error.NotFound(f"no resource {path}")
            if not spec.writable:
                raise aiocoap.error.MethodNotAllowed(f"{path} is read-only")
            checked[path] = _check_value(path, spec, value)
        self._advance()
        touched: dict[str, set[str]] = {}
        for path, value in checked.items():
            instance, key = path.rsplit("/", 1)
            if key == "5852":
                self._on_time_s[instance] = float(value)
            self._values[path] = value
            touched.setdefault(instance, set()).add(key)
        if self._kind == "plug" and "/3312/0/5850" in checked:
            on = bool(self._values["/3312/0/5850"])
            self._set_power(self._load_w * (1 + self._rng.gauss(0, 0.02)) if on else 0.0)
            touched.setdefault("/3305/0", set()).update({"5800", "5801", "5802"})
        _log.debug("coap %s: wrote %s", self._address, checked)
        for instance, keys in touched.items():
            self._notify(instance, keys)

    def _execute(self, obj: _Obj, key: str) -> None:
        p = f"{obj.path}/"
        v = self._values
        if key == "5605" and obj.object_id == 3305:
            v[p + "5801"] = v[p + "5802"] = v[p + "5800"]
            changed = {"5801", "5802"}
        elif key == "5605":
            v[p + "5601"] = v[p + "5602"] = v[p + "5700"]
            changed = {"5601", "5602"}
        elif key == "5505":
            v[p + "5501"] = 0
            changed = {"5501"}
        else:  # 5822 reset cumulative energy
            self._advance()
            v[p + "5805"] = 0.0
            changed = {"5805"}
        self._notify(obj.path, changed)

    def _notify(self, instance: str, keys: Iterable[str]) -> None:
        self._instances[instance].updated_state()
        for key in keys:
            leaf = self._leaves.get(f"{instance}/{key}")
            if leaf is not None:
                leaf.updated_state()

    def _notify_all(self) -> None:
        for instance in self._instances.values():
            instance.updated_state()
        for leaf in self._leaves.values():
            leaf.updated_state()

    def _complain(self, request: Any, what: str) -> None:
        self._complain_peer(_peer(request), what)

    def _complain_peer(self, peer: str, what: str) -> None:
        """Bad input: WARNING the first time per peer host (any port), DEBUG after that."""
        host = peer.rsplit(":", 1)[0] if peer.count(":") == 1 or peer.startswith("[") else peer
        self._complaints.report(host, "%s from %s", what, peer)

    # -- CoAP site and discovery ---------------------------------------------------------------

    def _build_site(self) -> Any:
        site = aiocoap.resource.Site()
        site.add_resource((".well-known", "core"), _WellKnownCore(site.get_resources_as_linkheader))
        for obj in self._objects:
            instance = _InstanceResource(self, obj)
            self._instances[obj.path] = instance
            site.add_resource(obj.path.strip("/").split("/"), instance)
            for res in obj.resources:
                leaf = _ValueResource(self, obj, res)
                self._leaves[f"{obj.path}/{res.key}"] = leaf
                site.add_resource(f"{obj.path}/{res.key}".strip("/").split("/"), leaf)
            for key in obj.executable:
                site.add_resource(
                    f"{obj.path}/{key}".strip("/").split("/"), _ExecutableResource(self, obj, key)
                )
        if self._kind in _INPUTS:
            site.add_resource(("sim", "test"), _TestButton(self))
        return site

    def _discovery_payload(self, queries: Sequence[str], *, absolute_base: str | None) -> bytes | None:
        """The link-format answer to a multicast discovery, or None when nothing matches."""
        links = [
            link for link in self._site.get_resources_as_linkheader().links if _link_matches(link, queries)
        ]
        if not links:
            return None
        if absolute_base is not None:
            links = [
                aiocoap.util.linkformat.Link(absolute_base + link.href, link.attr_pairs) for link in links
            ]
        return str(aiocoap.util.linkformat.LinkFormat(links)).encode()

    def _answer_discovery(self, request: Any, peer: str, *, absolute_base: str | None) -> Any:
        """The NON 2.05 answer to a multicast request (RFC 7252 §8.2), or None to stay silent:
        also for anything but a GET of /.well-known/core, as errors are not sent to a group."""
        if request.code != aiocoap.GET or request.opt.uri_path != (".well-known", "core"):
            return None
        if request.mtype == aiocoap.CON:
            self._complain_peer(peer, "a confirmable multicast request (RFC 7252 §8.1)")
            return None
        no_response = request.opt.no_response
        if no_response is not None and no_response & _NO_RESPONSE_2XX:
            return None
        if request.opt.accept is not None and request.opt.accept != CT_LINK_FORMAT:
            return None
        szx = _BLOCK_SZX
        asked = request.opt.block2
        if asked is not None:
            if asked.block_number != 0:
                return None  # later blocks are fetched by unicast
            szx = min(szx, asked.size_exponent)
        payload = self._discovery_payload(request.opt.uri_query, absolute_base=absolute_base)
        if payload is None:
            return None
        reply = aiocoap.Message(code=aiocoap.CONTENT, content_format=CT_LINK_FORMAT)
        # aiocoap 0.4.17 deprecates passing these to the constructor (the library manages
        # them for its own sockets); this answer leaves through ours.
        reply.mtype = aiocoap.NON
        reply.mid = self._rng.getrandbits(16)
        reply.token = request.token
        block_size = 2 ** (szx + 4)  # RFC 7959 §2.2
        if len(payload) > block_size or asked is not None:
            # RFC 7959 §2.8: the group answer carries block 0 (Size2: §4); the client
            # fetches the rest from this device by unicast.
            more = len(payload) > block_size
            reply.opt.block2 = aiocoap.optiontypes.BlockOption.BlockwiseTuple(0, more, szx)
            reply.opt.size2 = len(payload)
            payload = payload[:block_size]
        reply.payload = payload
        return reply

    def _open_responders(self, loop: asyncio.AbstractEventLoop) -> list[_MulticastResponder]:
        interface = self._multicast_interface
        try:
            ifindex = socket.if_nametoindex(interface)
        except OSError as exc:
            raise CoapSimError(f"no interface {interface!r} for multicast discovery") from exc
        responders = [
            _MulticastResponder(
                sock=_ipv4_group_socket(ifindex),
                reply_cmsg=(
                    socket.IPPROTO_IP,
                    _IP_PKTINFO,
                    struct.pack("i4s4s", 0, socket.inet_aton(self._address), b"\0" * 4),
                ),
                answer=lambda request, peer: self._answer_discovery(request, peer, absolute_base=None),
                label=f"{self._address} {ALL_COAP_NODES_V4}",
                loop=loop,
                rng=self._rng,
                complain=self._complain_peer,
            )
        ]
        link_local = _ipv6_link_local(interface)
        if link_local is None:
            # `lo` has ::1 but no link-local address, so nothing could answer ff02::fd from an
            # address valid on the link: in the private namespace this is always skipped.
            _log.debug(
                "coap %s: no link-local IPv6 on %s, not joining %s",
                self._address,
                interface,
                ALL_COAP_NODES_V6,
            )
            return responders
        try:
            sock6 = _ipv6_group_socket(ifindex)
        except OSError as exc:
            for responder in responders:
                responder.close()
            raise CoapSimError(f"cannot join {ALL_COAP_NODES_V6} on {interface}: {exc}") from exc
        # The device's unicast address is IPv4 and the link-local address is the host's, so
        # the links point at the device explicitly (RFC 6690 §2 allows absolute URIs).
        base = f"coap://{self._address}"
        responders.append(
            _MulticastResponder(
                sock=sock6,
                reply_cmsg=(
                    socket.IPPROTO_IPV6,
                    socket.IPV6_PKTINFO,
                    struct.pack("16sI", link_local, ifindex),
                ),
                answer=lambda request, peer: self._answer_discovery(request, peer, absolute_base=base),
                label=f"{self._address} {ALL_COAP_NODES_V6}%{interface}",
                loop=loop,
                rng=self._rng,
                complain=self._complain_peer,
            )
        )
        return responders


def _check_value(path: str, spec: _Res, value: Value) -> Value:
    checked: Value
    match spec.vtype:
        case "bool":
            if not isinstance(value, bool):
                raise aiocoap.error.BadRequest(f"{path} is a boolean (SenML vb, or text 1/0)")
            checked = value
        case "int":
            integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
            if isinstance(value, bool) or not integral:
                raise aiocoap.error.BadRequest(f"{path} is an integer (SenML v)")
            checked = int(value)
            if spec.bounds is not None and not spec.bounds[0] <= checked <= spec.bounds[1]:
                raise aiocoap.error.BadRequest(f"{path} must be in {spec.bounds[0]}..{spec.bounds[1]}")
        case "float":
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise aiocoap.error.BadRequest(f"{path} is a number (SenML v)")
            checked = float(value)
        case "str":
            if not isinstance(value, str):
                raise aiocoap.error.BadRequest(f"{path} is a string (SenML vs)")
            checked = value
    return checked


def _text_value(path: str, spec: _Res, payload: bytes) -> Value:
    """A text/plain representation (LwM2M plain text: booleans as 1/0) as a typed value."""
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise aiocoap.error.BadRequest(f"{path}: payload is not UTF-8") from exc
    if spec.vtype == "str":
        return text
    if spec.vtype == "bool":
        word = text.lower()
        if word in ("1", "true"):
            return True
        if word in ("0", "false"):
            return False
        raise aiocoap.error.BadRequest(f"{path} takes 1, 0, true or false, not {text[:40]!r}")
    try:
        number = float(text) if spec.vtype == "float" else int(text)
    except ValueError as exc:
        raise aiocoap.error.BadRequest(f"{path} takes a number, not {text[:40]!r}") from exc
    return number


def _text_of(value: Value) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _peer(request: Any) -> str:
    remote = getattr(request, "remote", None)
    return str(getattr(remote, "hostinfo", None) or remote or "?")


def _accepted(request: Any, allowed: Sequence[int]) -> int:
    accept = request.opt.accept
    if accept is None:
        return int(CT_SENML_JSON)
    if accept not in allowed:
        raise aiocoap.error.NotAcceptable(
            f"Accept {int(accept)} not supported; use one of {' '.join(str(int(c)) for c in allowed)}"
        )
    return int(accept)


def _senml_entries(request: Any) -> list[SenmlEntry]:
    content_format = request.opt.content_format
    if content_format not in _SENML_FORMATS:
        raise aiocoap.error.UnsupportedContentFormat(
            "send SenML: Content-Format 110 (senml+json) or 112 (senml+cbor)"
        )
    try:
        return decode_senml(request.payload, int(content_format))
    except SenmlError as exc:
        raise aiocoap.error.BadRequest(str(exc)) from exc


def _link_matches(link: Any, queries: Sequence[str]) -> bool:
    """RFC 6690 §4.1 filtering: `name=value`, a trailing `*` matches a prefix, and for
    space-separated attributes (rt, if, ct) any one entry may match."""
    for query in queries:
        name, sep, pattern = query.partition("=")
        if not sep:
            continue
        if name == "href":
            candidates: list[str] = [link.href]
        else:
            candidates = [
                part
                for key, value in link.attr_pairs
                if key == name and value is not None
                for part in str(value).split(" ")
            ]
        if pattern.endswith("*"):
            matched = any(c.startswith(pattern[:-1]) for c in candidates)
        else:
            matched = pattern in candidates
        if not matched:
            return False
    return True


# --- aiocoap resources ------------------------------------------------------------------------


class _WellKnownCore(aiocoap.resource.WKCResource):  # type: ignore[misc]
    """RFC 6690 `/.well-known/core` from the site's links, without listing itself and
    without aiocoap's implementation-info link (a device's firmware would not have it)."""

    def __init__(self, listgenerator: Callable[[], Any]) -> None:
        super().__init__(listgenerator, impl_info=None)

    def get_link_description(self) -> None:
        return None


class _InstanceResource(aiocoap.resource.ObservableResource):  # type: ignore[misc]
    """An object instance: SenML of all its readable resources; SenML writes."""

    def __init__(self, device: CoapDevice, obj: _Obj) -> None:
        super().__init__()
        self._device = device
        self._obj = obj

    def get_link_description(self) -> dict[str, str | None]:
        return {"rt": OBJECT_URNS[self._obj.object_id], "ct": _INSTANCE_CT, "obs": None}

    async def render_get(self, request: Any) -> Any:
        content_format = _accepted(request, _SENML_FORMATS)
        pack = self._device._pack(self._obj, (r.key for r in self._obj.resources))
        return aiocoap.Message(
            payload=_encode_pack(pack, content_format),
            content_format=content_format,
            max_age=self._device._max_age_s,
        )

    async def render_put(self, request: Any) -> Any:
        return self._write(request)

    async def render_post(self, request: Any) -> Any:
        return self._write(request)

    def _write(self, request: Any) -> Any:
        prefix = f"{self._obj.path}/"
        try:
            entries = _senml_entries(request)
            if not entries:
                raise aiocoap.error.BadRequest("the pack has no record with a value")
            values: dict[str, Value] = {}
            for entry in entries:
                path = entry.name if entry.name.startswith("/") else prefix + entry.name
                if not path.startswith(prefix):
                    raise aiocoap.error.BadRequest(f"{entry.name} is not in {self._obj.path}")
                values[path] = entry.value
            self._device._write(values)
        except aiocoap.error.RenderableError as exc:
            self._device._complain(request, f"rejected write to {self._obj.path}: {exc}")
            raise
        return aiocoap.Message(code=aiocoap.CHANGED)


class _ValueResource(aiocoap.resource.ObservableResource):  # type: ignore[misc]
    """One resource: text/plain or a one-record SenML pack; writable ones take PUT."""

    def __init__(self, device: CoapDevice, obj: _Obj, res: _Res) -> None:
        super().__init__()
        self._device = device
        self._obj = obj
        self._res = res
        self._path = f"{obj.path}/{res.key}"

    def get_link_description(self) -> None:
        return None  # only object instances are listed in /.well-known/core

    async def render_get(self, request: Any) -> Any:
        content_format = _accepted(request, (CT_SENML_JSON, CT_SENML_CBOR, CT_TEXT))
        pack = self._device._pack(self._obj, (self._res.key,))
        if content_format == CT_TEXT:
            payload = _text_of(self._device._values[self._path]).encode()
        else:
            payload = _encode_pack(pack, content_format)
        return aiocoap.Message(
            payload=payload, content_format=content_format, max_age=self._device._max_age_s
        )

    async def render_put(self, request: Any) -> Any:
        try:
            if not self._res.writable:
                raise aiocoap.error.MethodNotAllowed(f"{self._path} is read-only")
            content_format = request.opt.content_format
            if content_format is None or content_format == CT_TEXT:
                value = _text_value(self._path, self._res, request.payload)
            else:
                entries = _senml_entries(request)
                if len(entries) != 1:
                    raise aiocoap.error.BadRequest(f"send exactly one record for {self._path}")
                entry = entries[0]
                if entry.name not in (self._path, self._res.key):  # full, or relative to the instance
                    raise aiocoap.error.BadRequest(f"record {entry.name!r} is not {self._path}")
                value = entry.value
            self._device._write({self._path: value})
        except aiocoap.error.RenderableError as exc:
            self._device._complain(request, f"rejected write to {self._path}: {exc}")
            raise
        return aiocoap.Message(code=aiocoap.CHANGED)


class _ExecutableResource(aiocoap.resource.Resource):  # type: ignore[misc]
    """An LwM2M Execute resource: POST runs it (e.g. 5605 reset min/max)."""

    def __init__(self, device: CoapDevice, obj: _Obj, key: str) -> None:
        super().__init__()
        self._device = device
        self._obj = obj
        self._key = key

    def get_link_description(self) -> None:
        return None

    async def render_post(self, request: Any) -> Any:
        self._device._execute(self._obj, self._key)
        return aiocoap.Message(code=aiocoap.CHANGED)


class _TestButton(aiocoap.resource.Resource):  # type: ignore[misc]
    """`POST /sim/test`: the simulator's test button; not listed in /.well-known/core."""

    def __init__(self, device: CoapDevice) -> None:
        super().__init__()
        self._device = device

    def get_link_description(self) -> None:
        return None

    async def render_post(self, request: Any) -> Any:
        words = _INPUTS[self._device.kind][1]
        word = bytes(request.payload).decode("utf-8", "replace").strip().lower()
        if word not in words:
            self._device._complain(request, f"test button payload {word[:40]!r}")
            raise aiocoap.error.BadRequest(f"say one of: {', '.join(words)}")
        self._device.set_input(words[word])
        return aiocoap.Message(code=aiocoap.CHANGED)


async def _shutdown(context: Any) -> None:
    async with asyncio.timeout(_SHUTDOWN_TIMEOUT_S):
        await context.shutdown()


# --- multicast discovery ----------------------------------------------------------------------


def _ipv4_group_socket(ifindex: int) -> socket.socket:
    """A socket that receives datagrams sent to 224.0.1.187:5683 on one interface.

    Every simulated device on the host has one (SO_REUSEADDR lets them share the group
    address; each gets its own copy). aiocoap's own server socket stays on the device's
    unicast address: its answers to a group request would not come from that address.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((ALL_COAP_NODES_V4, COAP_PORT))
        mreqn = struct.pack("4s4si", socket.inet_aton(ALL_COAP_NODES_V4), b"\0" * 4, ifindex)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise CoapSimError(f"cannot join {ALL_COAP_NODES_V4}:{COAP_PORT}: {exc}") from exc
    return sock


def _ipv6_group_socket(ifindex: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((ALL_COAP_NODES_V6, COAP_PORT, 0, ifindex))
        mreq = socket.inet_pton(socket.AF_INET6, ALL_COAP_NODES_V6) + struct.pack("@I", ifindex)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _ipv6_link_local(interface: str) -> bytes | None:
    """A usable (not tentative) link-local IPv6 address of `interface`, or None.

    A /proc read of a few lines, so it is done inline.
    """
    try:
        table = Path("/proc/net/if_inet6").read_text()
    except OSError:
        return None  # IPv6 disabled
    for line in table.splitlines():
        fields = line.split()
        if len(fields) != 6 or fields[5] != interface:
            continue
        if int(fields[3], 16) == _IPV6_ADDR_LINKLOCAL and not int(fields[4], 16) & _IFA_F_TENTATIVE:
            return bytes.fromhex(fields[0])
    return None


class _MulticastResponder:
    """Reads group requests from one socket on the event loop and answers them by unicast
    from the device's own address (IP_PKTINFO / IPV6_PKTINFO), each after a random leisure.

    Bad datagrams are reported (once per peer at WARNING) and dropped. Answers waiting out
    their leisure are bounded; beyond that, requests are dropped. `close()` is idempotent.
    """

    def __init__(
        self,
        *,
        sock: socket.socket,
        reply_cmsg: tuple[int, int, bytes],
        answer: Callable[[Any, str], Any],
        label: str,
        loop: asyncio.AbstractEventLoop,
        rng: random.Random,
        complain: Callable[[str, str], None],
    ) -> None:
        self._sock = sock
        self._reply_cmsg = reply_cmsg
        self._answer = answer
        self._label = label
        self._loop = loop
        self._rng = rng
        self._complain = complain
        self._pending: dict[int, asyncio.TimerHandle] = {}
        self._ids = itertools.count()
        self._closed = False
        self.dropped = 0

    def start(self) -> None:
        self._loop.add_reader(self._sock.fileno(), self._on_readable)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for handle in self._pending.values():
            handle.cancel()
        self._pending.clear()
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()

    def _on_readable(self) -> None:
        for _ in range(_MAX_DATAGRAMS_PER_WAKEUP):
            try:
                data, _ancdata, flags, peer = self._sock.recvmsg(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                _log.warning("coap %s: receive failed: %s", self._label, exc)
                return
            self._on_datagram(data, flags, peer)

    def _on_datagram(self, data: bytes, flags: int, peer: Any) -> None:
        who = _hostinfo(peer)
        if flags & socket.MSG_TRUNC:
            self._complain(who, "an oversized datagram")
            return
        if data[:1] and data[0] & 0x0F > 8:  # RFC 7252 §3: token lengths 9-15 are reserved
            self._complain(who, "a CoAP datagram with a reserved token length")
            return
        try:
            request = aiocoap.Message.decode(data)
            reply = self._answer(request, who)
            encoded = None if reply is None else reply.encode()
        except (aiocoap.error.UnparsableMessage, ValueError, TypeError, struct.error) as exc:
            self._complain(who, f"an unparsable CoAP datagram ({exc})")
            return
        if encoded is None:
            return
        if len(self._pending) >= _MAX_PENDING_ANSWERS:
            self.dropped += 1
            self._complain(who, "more group requests than this device answers at once")
            return
        key = next(self._ids)
        delay = self._rng.uniform(0, MULTICAST_LEISURE_S)
        self._pending[key] = self._loop.call_later(delay, self._send, key, encoded, peer)

    def _send(self, key: int, encoded: bytes, peer: Any) -> None:
        self._pending.pop(key, None)
        try:
            self._sock.sendmsg([encoded], [self._reply_cmsg], 0, peer)
        except OSError as exc:
            _log.warning("coap %s: answer to %s not sent: %s", self._label, peer, exc)


def _hostinfo(sockaddr: Any) -> str:
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


# --- several devices --------------------------------------------------------------------------


async def run_coap_devices(devices: Sequence[CoapDevice]) -> None:
    """Run all devices until cancelled; logs one line once all are ready."""
    for attr in ("address", "serial"):
        seen: set[str] = set()
        for device in devices:
            value = getattr(device, attr)
            if value in seen:
                raise CoapSimError(f"two CoAP devices share the {attr} {value}")
            seen.add(value)
    async with asyncio.TaskGroup() as tg:
        for device in devices:
            tg.create_task(device.run(), name=f"coap-{device.serial}")
        tg.create_task(_log_when_ready(devices), name="coap-devices-ready")


async def _log_when_ready(devices: Sequence[CoapDevice]) -> None:
    for device in devices:
        await device.wait_ready()
    _log.info("%d CoAP devices ready: %s", len(devices), ", ".join(d.address for d in devices))


# --- a device that misbehaves -----------------------------------------------------------------

DEFAULT_HOSTILE_WKC_BYTES: Final = 300 * 1024
DEFAULT_FLOOD_RATE_HZ: Final = 500.0
_MALFORMED_PATH: Final = "/3303/0"
_FLOOD_PATH: Final = "/3302/0"


class HostileCoapDevice(CoapDevice):
    """A device that breaks the rules a gateway must survive ("hostile LAN" tests).

    - It answers multicast discovery like any device, but ignores query filters, and its
      `/.well-known/core` is `wkc_size_bytes` of links (block-wise by unicast; block 0 with
      Size2 to the group), most of them to instances that do not exist (4.04).
    - `/3303/0` is listed as a temperature sensor and serves broken SenML, a different kind
      on each GET or notification: truncated or invalid JSON, wrong types, `bn` without
      records, an object instead of an array, NaN, deep nesting, invalid UTF-8, CBOR labelled
      as JSON, and garbage or truncated CBOR when CBOR is asked for.
    - `/3302/0` (presence) floods notifications at `flood_rate_hz` while observed.
    It is a motion sensor otherwise (`/3/0`, `/sim/test`, `set_input`).
    """

    def __init__(
        self,
        *,
        address: str,
        serial: str,
        name: str = "异常设备",
        wkc_size_bytes: int = DEFAULT_HOSTILE_WKC_BYTES,
        flood_rate_hz: float = DEFAULT_FLOOD_RATE_HZ,
        report_interval_s: float = DEFAULT_REPORT_INTERVAL_S,
        seed: int | None = None,
        multicast_interface: str = "lo",
    ) -> None:
        if not flood_rate_hz > 0:
            raise CoapSimError(f"flood_rate_hz must be positive, not {flood_rate_hz}")
        self._wkc_size_bytes = wkc_size_bytes
        self._flood_interval_s = 1.0 / flood_rate_hz
        self._flood_wanted = asyncio.Event()
        self._flood_idle = asyncio.Event()
        self._flood_idle.set()
        self._flooded = 0
        super().__init__(
            kind="motion",
            address=address,
            serial=serial,
            name=name,
            report_interval_s=report_interval_s,
            seed=seed,
            multicast_interface=multicast_interface,
        )

    def _build_site(self) -> Any:
        site = super()._build_site()
        presence = next(obj for obj in self._objects if obj.object_id == 3302)
        flood = _FloodingInstance(self, presence, self._flood_observers)
        self._instances[_FLOOD_PATH] = flood
        site.add_resource(_FLOOD_PATH.strip("/").split("/"), flood)
        self._malformed = _MalformedInstance(_malformed_payloads(self._rng))
        site.add_resource(_MALFORMED_PATH.strip("/").split("/"), self._malformed)
        real = str(site.get_resources_as_linkheader())
        self._wkc_payload = _oversized_links(real, self._wkc_size_bytes)
        site.add_resource((".well-known", "core"), _StaticLinkFormat(self._wkc_payload))
        return site

    def _notify_all(self) -> None:
        super()._notify_all()
        self._malformed.updated_state()

    def _discovery_payload(self, queries: Sequence[str], *, absolute_base: str | None) -> bytes | None:
        return self._wkc_payload  # filters ignored, on purpose

    def _start_tasks(self, tg: asyncio.TaskGroup) -> None:
        super()._start_tasks(tg)
        tg.create_task(self._flood(), name=f"coap-flood-{self.serial}")

    @property
    def notifications_flooded(self) -> int:
        """Notifications triggered by the flood so far (aiocoap coalesces what it cannot send)."""
        return self._flooded

    async def wait_unobserved(self) -> None:
        """Return once nobody observes the flooding resource (its observers left or were
        dropped after a Reset), i.e. the flood has stopped."""
        await self._flood_idle.wait()

    def _flood_observers(self, count: int) -> None:
        if count:
            self._flood_idle.clear()
            self._flood_wanted.set()
        else:
            self._flood_wanted.clear()
            self._flood_idle.set()

    async def _flood(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._flood_wanted.wait()
            due = loop.time()
            while self._flood_wanted.is_set():
                self._values[f"{_FLOOD_PATH}/5500"] = not self._values[f"{_FLOOD_PATH}/5500"]
                self._instances[_FLOOD_PATH].updated_state()
                self._flooded += 1
                due = max(due + self._flood_interval_s, loop.time() - 1.0)
                await asyncio.sleep(max(0.0, due - loop.time()))


class _FloodingInstance(_InstanceResource):
    """An instance that tells its device how many observe it (aiocoap's hook)."""

    def __init__(self, device: CoapDevice, obj: _Obj, on_observers: Callable[[int], None]) -> None:
        super().__init__(device, obj)
        self._on_observers = on_observers

    def update_observation_count(self, newcount: int) -> None:
        self._on_observers(newcount)


class _MalformedInstance(aiocoap.resource.ObservableResource):  # type: ignore[misc]
    """Serves the next broken representation on every GET or notification."""

    def __init__(self, payloads: Mapping[str, Sequence[tuple[bytes, int]]]) -> None:
        super().__init__()
        self._payloads = payloads
        self._count = itertools.count()

    def get_link_description(self) -> dict[str, str | None]:
        return {"rt": OBJECT_URNS[3303], "ct": _INSTANCE_CT, "obs": None}

    async def render_get(self, request: Any) -> Any:
        family = "cbor" if request.opt.accept == CT_SENML_CBOR else "json"
        variants = self._payloads[family]
        payload, content_format = variants[next(self._count) % len(variants)]
        return aiocoap.Message(payload=payload, content_format=ContentFormat(content_format))


class _StaticLinkFormat(aiocoap.resource.Resource):  # type: ignore[misc]
    def __init__(self, payload: bytes) -> None:
        super().__init__()
        self._payload = payload

    def get_link_description(self) -> None:
        return None

    async def render_get(self, request: Any) -> Any:
        return aiocoap.Message(payload=self._payload, content_format=CT_LINK_FORMAT)


def _oversized_links(real: str, size: int) -> bytes:
    parts = [real]
    total = len(real)
    for index in itertools.count(1):
        if total >= size:
            break
        link = f'</3303/{index}>;rt="{OBJECT_URNS[3303]}";ct="{_INSTANCE_CT}";obs;title="sensor {index:06d}"'
        parts.append(link)
        total += len(link) + 1
    return ",".join(parts).encode()


def _malformed_payloads(rng: random.Random) -> dict[str, list[tuple[bytes, int]]]:
    bn = '"bn":"/3303/0/"'
    good = [{-2: "/3303/0/", 0: "5700", 2: 21.5, 1: "Cel"}]
    json_variants = [
        b"[{" + bn.encode() + b',"bt":1700000000,"n":"5700","v":21.',
        b"[{" + bn.encode() + b',"n":5700,"v":"21.5"},{"n":"5701","vs":17},{"n":"5601","vb":"yes"}]',
        b"[{" + bn.encode() + b"}]",
        b"{" + bn.encode() + b',"n":"5700","v":21.5}',
        b"[{" + bn.encode() + b',"n":"5700","v":NaN},{"n":"5601","v":1e999}]',
        b"[" * 20_000 + b"]" * 20_000,
        b"[{" + bn.encode() + b',"n":"57\xff\xfe","v":21.5}]',
        b"[{" + bn.encode() + b',"n":"5700","v":21.5,"vs":"warm","vb":true,"x_":1}]',
        cbor2.dumps(good),  # CBOR, labelled as JSON
    ]
    cbor_variants = [
        rng.randbytes(512),
        cbor2.dumps(good)[:-3],
        cbor2.dumps({"bn": 7, "records": "none"}),
        b"\x9f" * 1_000,
        b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff",  # a byte string claiming 2**64-1 bytes
        b"\x81" * 50_000 + b"\x00",
    ]
    return {
        "json": [(p, int(CT_SENML_JSON)) for p in json_variants],
        "cbor": [(p, int(CT_SENML_CBOR)) for p in cbor_variants],
    }
