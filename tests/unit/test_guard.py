"""The LAN guard's parsers and bounds (gateway/devices/guard.py), and every adapter's handlers fed
arbitrary input: only the documented error types, counted drops, no growth past the bounds."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import LanSettings
from gateway.devices.base import Found
from gateway.devices.guard import Drops, PeerDataError, bounded_lines, check_depth, loads_json, topic_level_ok
from gateway.devices.senml import CT_SENML_CBOR, CT_SENML_JSON, SenMLError, parse_senml
from gateway.devices.tasmota import TasmotaAdapter
from gateway.devices.terminal import TerminalInfo
from gateway.devices.zigbee2mqtt import Zigbee2MqttAdapter
from gateway.errors import BrokerError
from gateway.mqtt import Message, valid_filter, valid_topic

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=40,
)


def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


# -- JSON within bounds ---------------------------------------------------------------------


@given(st.binary(max_size=2000))
def test_loads_json_on_arbitrary_bytes_raises_only_its_own_error(raw: bytes) -> None:
    reason = ""
    try:
        loads_json(raw, max_bytes=1024, max_depth=8)
    except PeerDataError as exc:
        reason = exc.reason
    assert reason in ("", "too_large", "too_deep", "invalid_json")


def depth(value: Any) -> int:
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
    return 0 if children is None else 1 + max((depth(c) for c in children), default=0)


@given(json_values)
def test_loads_json_takes_what_fits_and_measures_depth(value: Any) -> None:
    raw = json.dumps(value).encode()
    if depth(value) <= 4:
        assert loads_json(raw, max_bytes=1 << 20, max_depth=4) == value
    else:
        with pytest.raises(PeerDataError, match="too_deep"):
            loads_json(raw, max_bytes=1 << 20, max_depth=4)
        with pytest.raises(PeerDataError):
            check_depth(value, 4)


def test_deep_and_large_json_are_refused_without_recursion() -> None:
    for depth, reason in ((33, "too_deep"), (2000, "too_deep"), (100_000, "too_deep")):
        with pytest.raises(PeerDataError) as err:
            loads_json(nested(depth), max_bytes=1 << 21, max_depth=32)
        assert err.value.reason == reason
    assert loads_json(nested(32), max_bytes=4096, max_depth=32) == json.loads(nested(32))
    with pytest.raises(PeerDataError) as err:
        loads_json(b"[" + b"1," * 5000 + b"1]", max_bytes=4096, max_depth=32)
    assert err.value.reason == "too_large"
    for bad in (b"[NaN]", b"[Infinity]", b"1" * 400):
        with pytest.raises(PeerDataError):
            loads_json(bad, max_bytes=4096, max_depth=4)


# -- lines within bounds ----------------------------------------------------------------------


async def _chunks(data: bytes, cuts: list[int]) -> AsyncIterator[bytes]:
    start = 0
    for cut in sorted({c % (len(data) + 1) for c in cuts}):
        yield data[start:cut]
        start = cut
    yield data[start:]


async def _lines(data: bytes, cuts: list[int], limit: int) -> tuple[list[str], int]:
    overlong = 0

    def count() -> None:
        nonlocal overlong
        overlong += 1

    got = [line async for line in bounded_lines(_chunks(data, cuts), max_line_bytes=limit, on_overlong=count)]
    return got, overlong


@settings(max_examples=300)
@given(
    st.lists(st.text(alphabet="ab\u00e9 ", max_size=12), max_size=8),
    st.sampled_from(["\n", "\r\n", "\r"]),
    st.lists(st.integers(min_value=0, max_value=200), max_size=6),
)
async def test_bounded_lines_split_like_the_sse_grammar_however_the_bytes_arrive(
    lines: list[str], ending: str, cuts: list[int]
) -> None:
    data = "".join(line + ending for line in lines).encode()
    got, overlong = await _lines(data, cuts, limit=8)
    expected = [line for line in lines if len(line.encode()) <= 8]
    assert got == expected
    assert overlong == len(lines) - len(expected)


async def test_an_endless_line_is_skipped_not_kept() -> None:
    async def endless() -> AsyncIterator[bytes]:
        yield b"data: "
        for _ in range(2000):  # 128 MB, never buffered
            yield b"A" * 65536
        yield b"\nnext\n"

    overlong = []
    got = [
        line
        async for line in bounded_lines(
            endless(), max_line_bytes=1024, on_overlong=lambda: overlong.append(1)
        )
    ]
    assert got == ["next"] and overlong == [1]


# -- topics from device text --------------------------------------------------------------------


@given(st.text(max_size=40))
def test_a_topic_level_accepted_is_plain(text: str) -> None:
    if topic_level_ok(text):
        assert valid_topic(text) and valid_filter(text) and not text.startswith("$") and "/" not in text
    if topic_level_ok(text, allow_slash=True):
        assert valid_topic(text) and "" not in text.split("/")


@given(st.text(alphabet="ab/+#$\x00", max_size=12))
def test_filters_and_topics_follow_mqtt_3_1_1(text: str) -> None:
    levels = text.split("/")
    ok = bool(text) and "\x00" not in text
    ok = ok and all(lv in ("+", "#") or ("+" not in lv and "#" not in lv) for lv in levels)
    ok = ok and all(lv != "#" or i == len(levels) - 1 for i, lv in enumerate(levels))
    assert valid_filter(text) == ok
    assert valid_topic(text) == (bool(text) and not any(c in text for c in "+#\x00"))


# -- SenML with numbers beyond a double ---------------------------------------------------------------


@given(st.integers(min_value=-(10**400), max_value=10**400), st.sampled_from(["v", "bv", "t", "bt"]))
def test_senml_with_any_integer_raises_only_senml_errors(number: int, key: str) -> None:
    record: dict[Any, Any] = {"n": "/3/0/9", "v": 1, key: number}
    for payload, fmt in (
        (cbor2.dumps([record]), CT_SENML_CBOR),
        (json.dumps([record]).encode(), CT_SENML_JSON),
    ):
        try:
            for r in parse_senml(payload, fmt):
                assert isinstance(r.value, float)
        except SenMLError:
            pass


@given(json_values)
def test_terminal_info_takes_any_json_or_refuses_it(value: Any) -> None:
    try:
        TerminalInfo.model_validate(value)
    except ValueError:  # pydantic's ValidationError is a ValueError
        pass


# -- adapters fed anything on their topics --------------------------------------------------------


class Sink:
    """Records what an adapter reports (a stand-in for the hub in unit tests of pure logic)."""

    def __init__(self) -> None:
        self.found: dict[str, Found] = {}
        self.state: dict[str, dict[str, Any]] = {}
        self.gone: list[str] = []
        self.online: dict[str, bool] = {}
        self.security: list[tuple[str, str]] = []

    def admit(self, device_id: str, protocol: str, address: str) -> str | None:
        return device_id

    def device_found(self, found: Found) -> None:
        self.found[found.info.id] = found

    def device_state(self, device_id: str, values: Mapping[str, Any]) -> None:
        self.state.setdefault(device_id, {}).update(values)

    def device_availability(self, device_id: str, online: bool) -> None:
        self.online[device_id] = online

    def device_gone(self, device_id: str) -> None:
        self.gone.append(device_id)

    def device_event(self, device_id: str, kind: str, data: Mapping[str, Any]) -> None:
        pass

    def device_meta(self, device_id: str) -> Mapping[str, Any] | None:
        return None

    def security_event(self, reason: str, device_id: str, peer: str, detail: str) -> None:
        self.security.append((reason, device_id))

    def approved(self, device_id: str) -> bool:
        return True


class Broker:
    """Subscriptions and publishes recorded, with the real client's topic checks."""

    def __init__(self) -> None:
        self.filters: list[str] = []
        self.published: list[str] = []

    def subscribe(self, topic_filter: str, handler: Any, *, qos: int = 0) -> Any:
        if not valid_filter(topic_filter):
            raise BrokerError(f"bad filter {topic_filter!r}")
        self.filters.append(topic_filter)
        return lambda: None

    def publish(self, topic: str, payload: bytes | str, *, qos: int = 0, retain: bool = False) -> bool:
        if not valid_topic(topic):
            raise BrokerError(f"bad topic {topic!r}")
        self.published.append(topic)
        return True


PLUG = {
    "mac": "A4CF12B3C4D5", "t": "tasmota_B3C4D5", "ft": "%prefix%/%topic%/", "tp": ["cmnd", "stat", "tele"],
    "dn": "Plug", "fn": ["客厅插座"], "rl": [1], "state": ["OFF", "ON", "TOGGLE", "HOLD"],
}  # fmt: skip


def tasmota(sink: Sink, **limits: int) -> tuple[TasmotaAdapter, Broker]:
    broker = Broker()
    adapter = TasmotaAdapter(broker, sink, limits=LanSettings(**limits))  # type: ignore[arg-type]
    return adapter, broker


@settings(max_examples=200)
@given(
    st.sampled_from(["config", "sensors"]),
    st.text(alphabet="0123456789ABCDEFabcdef:+#", min_size=0, max_size=14),
    st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode())),
)
def test_tasmota_discovery_takes_anything_and_raises_nothing(leaf: str, mac: str, payload: bytes) -> None:
    sink = Sink()
    adapter, broker = tasmota(sink)
    handler = adapter._on_config if leaf == "config" else adapter._on_sensors
    handler(Message(f"tasmota/discovery/{mac}/{leaf}", payload))
    assert all(valid_filter(f) for f in broker.filters)


@given(st.lists(st.sampled_from(["a+b", "a#", "$SYS", "", "a/b", "ok"]), min_size=1, max_size=3))
def test_tasmota_topics_from_the_device_are_checked_before_use(topics: list[str]) -> None:
    sink = Sink()
    adapter, broker = tasmota(sink)
    config = {
        **PLUG,
        "t": topics[0],
        "tp": [*topics[1:], "stat", "tele"][:3] if len(topics) > 1 else PLUG["tp"],
    }
    adapter._on_config(Message("tasmota/discovery/A4CF12B3C4D5/config", json.dumps(config).encode()))
    assert all(valid_filter(f) for f in broker.filters)
    assert bool(sink.found) == (topics[0] == "ok" and all(topic_level_ok(t) for t in config["tp"]))


def test_tasmota_bounds_relays_unknown_sensors_and_another_plugs_topic() -> None:
    sink = Sink()
    adapter, _ = tasmota(sink, max_early_sensors=10)
    relays = {**PLUG, "rl": [1] * 20_000}
    adapter._on_config(Message("tasmota/discovery/A4CF12B3C4D5/config", json.dumps(relays).encode()))
    assert not sink.found and adapter.drops.counts["invalid_config"] == 1
    for n in range(1500):
        adapter._on_sensors(
            Message(f"tasmota/discovery/02BADC{n:06X}/sensors", b'{"sn": {"ENERGY": {"Power": 1}}}')
        )
    assert len(adapter._early_sensors) == 10 and adapter.drops.counts["too_many_unknown"] == 1490
    adapter._on_config(Message("tasmota/discovery/A4CF12B3C4D5/config", json.dumps(PLUG).encode()))
    assert set(sink.found) == {"tasmota-a4cf12b3c4d5"}
    steal = {**PLUG, "mac": "A4CF12B3C4D6"}
    adapter._on_config(Message("tasmota/discovery/A4CF12B3C4D6/config", json.dumps(steal).encode()))
    assert "tasmota-a4cf12b3c4d6" not in sink.found
    assert sink.security == [("topic_taken", "tasmota-a4cf12b3c4d6")]
    # An empty retained config: offline, never forgotten.
    adapter._on_config(Message("tasmota/discovery/A4CF12B3C4D5/config", b""))
    assert sink.online["tasmota-a4cf12b3c4d5"] is False and sink.gone == []


def test_tasmota_with_logins_takes_only_a_macs_own_topic() -> None:
    sink = Sink()
    broker = Broker()
    logins = {"a4cf12b3c4d5": "tasmota_B3C4D5"}
    adapter = TasmotaAdapter(broker, sink, topic_of_login=logins.get)  # type: ignore[arg-type]
    adapter._on_config(
        Message("tasmota/discovery/A4CF12B3C4D6/config", json.dumps({**PLUG, "mac": "A4CF12B3C4D6"}).encode())
    )
    assert not sink.found and adapter.drops.counts["no_login"] == 1
    adapter._on_config(
        Message("tasmota/discovery/A4CF12B3C4D5/config", json.dumps({**PLUG, "t": "other"}).encode())
    )
    assert not sink.found and sink.security == [("topic_mismatch", "tasmota-a4cf12b3c4d5")]
    adapter._on_config(Message("tasmota/discovery/A4CF12B3C4D5/config", json.dumps(PLUG).encode()))
    assert set(sink.found) == {"tasmota-a4cf12b3c4d5"}


def z2m_light(n: int, **ct: Any) -> dict[str, Any]:
    return {
        "ieee_address": f"0x{n:016x}",
        "friendly_name": f"灯{n}",
        "type": "Router",
        "definition": {
            "model": "LED1545G12",
            "vendor": "IKEA",
            "exposes": [
                {"type": "light", "features": [
                    {"type": "binary", "property": "state", "access": 7,
                     "value_on": "ON", "value_off": "OFF"},
                    {"type": "numeric", "property": "color_temp", "access": 7, "unit": "mired", **ct},
                ]},
            ],
        },
    }  # fmt: skip


def test_zigbee2mqtt_takes_each_device_on_its_own_and_bounds_the_list() -> None:
    sink = Sink()
    adapter = Zigbee2MqttAdapter(Broker(), sink, limits=LanSettings(max_devices_per_protocol=6))  # type: ignore[arg-type]
    good = [z2m_light(n) for n in range(3)]
    text = json.dumps([*good, z2m_light(7), z2m_light(8), {**z2m_light(9), "friendly_name": "a+b"}])
    text = text.replace('"unit": "mired"}', '"unit": "mired", "value_min": Infinity}', 1)  # 3 has inf
    adapter._on_message(Message("zigbee2mqtt/bridge/devices", text.encode()))
    assert len(sink.found) == 4  # three good ones and one of 7 or 8; the + name and inf refused
    assert adapter.drops.counts["bad_name"] == 1 and adapter.drops.counts["invalid_device"] == 1
    many = json.dumps([z2m_light(n) for n in range(100)]).encode()
    adapter._on_message(Message("zigbee2mqtt/bridge/devices", many))
    assert len(sink.found) <= 10 and adapter.drops.counts["too_many_devices"] == 94
    assert sorted(sink.gone) == ["zigbee-0000000000000007", "zigbee-0000000000000008"]  # left the list
    adapter._on_message(Message("zigbee2mqtt/bridge/devices", b"[]"))
    assert len(sink.gone) == 2 and not any(sink.online[d] for d in adapter._by_id)  # offline, kept


@settings(max_examples=200)
@given(
    st.sampled_from(["bridge/devices", "bridge/state", "灯1", "灯1/availability", "x/set"]),
    st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode())),
)
def test_zigbee2mqtt_takes_anything_and_raises_nothing(leaf: str, payload: bytes) -> None:
    sink = Sink()
    adapter = Zigbee2MqttAdapter(Broker(), sink)  # type: ignore[arg-type]
    adapter._on_message(Message("zigbee2mqtt/bridge/devices", json.dumps([z2m_light(1)]).encode()))
    adapter._on_message(Message(f"zigbee2mqtt/{leaf}", payload))


def test_drops_count_every_time_and_log_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    drops = Drops("test")
    for _ in range(5):
        drops.drop("peer-a", "too_large", "x")
    drops.drop("peer-b", "too_large", "y", count=3)
    assert drops.counts["too_large"] == 8 and drops.total == 8
    assert len([r for r in caplog.records if "dropped" in r.getMessage()]) == 2
