"""Recorded real payloads (tests/fixtures) through the adapters' models, and arbitrary input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.devices.tasmota import TasmotaConfig, parse_sensor_payload
from gateway.devices.zigbee2mqtt import _DEVICES, Expose, Z2mDevice, map_exposes
from gateway.model import Kind

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def test_tasmota_discovery_config_from_real_firmware() -> None:
    cfg = TasmotaConfig.model_validate(load("tasmota/discovery_config_sonoff_s31.json"))
    assert cfg.mac == "d8bfc01a2b3c"
    assert cfg.topic(0, "POWER") == "cmnd/tasmota_1A2B3C/POWER"
    assert cfg.topic(2) == "tele/tasmota_1A2B3C/"
    assert cfg.rl[0] == 1 and cfg.md == "Sonoff S31"


def test_tasmota_fulltopic_variants() -> None:
    base = load("tasmota/discovery_config_sonoff_s31.json")
    cfg = TasmotaConfig.model_validate({**base, "ft": "%topic%/%prefix%/"})
    assert cfg.topic(1, "RESULT") == "tasmota_1A2B3C/stat/RESULT"
    cfg = TasmotaConfig.model_validate({**base, "ft": "home/%hostname%/%prefix%"})
    assert cfg.topic(0, "POWER") == "home/tasmota-1A2B3C-2876/cmnd/POWER"


def test_tasmota_energy_sensor() -> None:
    values = parse_sensor_payload(load("tasmota/tele_sensor_energy.json"))
    assert values == {"power": 61.0, "energy": 96.214, "voltage": 228.0, "current": 0.276}


def test_tasmota_climate_sensors_and_fahrenheit() -> None:
    values = parse_sensor_payload({"AM2301": {"Temperature": 71.6, "Humidity": 40.1}, "TempUnit": "F"})
    assert values == {"temperature": 22.0, "humidity": 40.1}
    # Multi-channel meters report lists; channel 2 reads the second value.
    assert parse_sensor_payload({"ENERGY": {"Power": [10, 20]}}, channel=1) == {"power": 20.0}


def test_zigbee2mqtt_devices_from_real_bridge() -> None:
    entries = _DEVICES.validate_python(load("zigbee2mqtt/bridge_devices_excerpt.json"))
    devices = {d.friendly_name: d for d in entries if isinstance(d, Z2mDevice)}
    kinds = {}
    for dev in devices.values():
        if dev.definition is None:
            continue
        kind, bindings = map_exposes(dev.definition.exposes)
        kinds[dev.definition.model] = (kind, {b.capability: b for b in bindings})
    kind, caps = kinds["LED1545G12"]
    assert kind is Kind.LIGHT
    assert set(caps) >= {"on", "brightness", "color_temp"}
    assert caps["on"].settable and caps["brightness"].high == 254
    kind, caps = kinds["WSDCGQ11LM"]
    assert kind is Kind.SENSOR
    assert set(caps) >= {"temperature", "humidity", "battery"}
    assert "voltage" not in caps  # battery millivolts are not mains voltage
    state = load("zigbee2mqtt/state_wsdcgq11lm.json")
    assert isinstance(state["temperature"], float | int)


exposes = st.recursive(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["binary", "numeric", "enum", "text", "light", "switch", "composite"])},
        optional={
            "name": st.text(max_size=10),
            "property": st.sampled_from(
                ["state", "brightness", "color_temp", "temperature", "contact", "occupancy", "x"]
            ),
            "access": st.integers(-1, 7),
            "unit": st.sampled_from(["°C", "%", "mired", "lx", "mV", "W", None]),
            "value_on": st.one_of(st.booleans(), st.text(max_size=3)),
            "value_off": st.one_of(st.booleans(), st.text(max_size=3)),
            "value_min": st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6),
            "value_max": st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6),
        },
    ),
    lambda children: st.fixed_dictionaries(
        {"type": st.just("light"), "features": st.lists(children, max_size=3)}
    ),
    max_leaves=6,
)


@given(st.lists(exposes, max_size=5))
def test_any_exposes_map_without_crashing(raw: list[dict[str, Any]]) -> None:
    try:
        parsed = tuple(Expose.model_validate(e) for e in raw)
    except ValidationError:
        return
    kind, bindings = map_exposes(parsed)
    assert isinstance(kind, Kind)
    assert len({b.capability for b in bindings}) == len(bindings)


@given(st.binary(max_size=500))
def test_garbage_discovery_payloads_only_raise_validation_errors(payload: bytes) -> None:
    for parse in (TasmotaConfig.model_validate_json, _DEVICES.validate_json):
        try:
            parse(payload)
        except ValidationError:
            pass


@given(
    st.dictionaries(
        st.text(max_size=8),
        st.one_of(
            st.none(),
            st.integers(),
            st.floats(),
            st.text(max_size=5),
            st.dictionaries(st.text(max_size=8), st.floats()),
        ),
    )
)
def test_sensor_parser_never_raises(payload: dict[str, Any]) -> None:
    for value in parse_sensor_payload(payload).values():
        assert isinstance(value, float)
