"""Home Assistant discovery payloads: required keys, and templates that really work.

Templates are rendered with Jinja2 (what Home Assistant uses) against real state payloads,
and the commands they produce must pass the gateway's own `set` validator.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jinja2
import pytest

from gateway.homeassistant import bridge_config, device_configs
from gateway.model import DeviceInfo, Kind, validate_command

ENV = jinja2.Environment(autoescape=False)
GW = "gw-1"
TOPIC = re.compile(
    r"^homeassistant/(light|switch|sensor|binary_sensor|number|notify)/[a-zA-Z0-9_-]+/[a-zA-Z0-9_-]+/config$"
)

BULB = DeviceInfo(
    id="zigbee-000b57fffec6a5b2", name="落地灯", kind=Kind.LIGHT, room="客厅", protocol="zigbee2mqtt",
    capabilities=("on", "brightness", "color_temp"), settable=("on", "brightness", "color_temp"),
    controllable=True, ranges={"color_temp": (2203.0, 6536.0)}, manufacturer="IKEA", model="LED1545G12",
)  # fmt: skip
PLUG = DeviceInfo(
    id="tasmota-a4cf12b3c4d5", name="客厅插座", kind=Kind.PLUG, protocol="tasmota",
    capabilities=("on", "power", "energy", "voltage", "current"), settable=("on",), controllable=True,
)  # fmt: skip
DOOR = DeviceInfo(
    id="zigbee-00158d0001a2b3c4", name="大门", kind=Kind.SENSOR, protocol="zigbee2mqtt",
    capabilities=("contact", "battery"),
)  # fmt: skip
SPEAKER = DeviceInfo(
    id="bfy-speaker-1", name="音箱", kind=Kind.SPEAKER, protocol="terminal",
    capabilities=("volume", "muted"), settable=("volume", "muted", "say"), controllable=True,
)  # fmt: skip


def render(template: str, **variables: Any) -> str:
    return ENV.from_string(template).render(**variables)


@pytest.mark.parametrize("info", [BULB, PLUG, DOOR, SPEAKER], ids=lambda i: i.id)
def test_every_entity_has_what_home_assistant_requires(info: DeviceInfo) -> None:
    configs = device_configs(GW, info, "homeassistant")
    assert configs
    for topic, cfg in configs.items():
        assert TOPIC.match(topic), topic
        component = topic.split("/")[1]
        assert cfg["unique_id"].startswith(f"{GW}_")
        assert cfg["device"]["identifiers"] and cfg["device"]["via_device"] == f"bfy_{GW}"
        assert cfg["availability_mode"] == "all"
        assert [a["topic"] for a in cfg["availability"]] == [
            f"home/{GW}/status",
            f"home/{GW}/device/{info.id}/availability",
        ]
        assert cfg["default_entity_id"].startswith(component + ".")
        if component in ("light", "switch", "number", "notify"):
            assert cfg["command_topic"] == f"home/{GW}/device/{info.id}/set"
        if component != "notify":
            assert cfg["state_topic"] == f"home/{GW}/device/{info.id}/state"
        json.dumps(cfg)  # serializable
    unique = [c["unique_id"] for c in configs.values()]
    assert len(unique) == len(set(unique))


def test_light_templates_round_trip_through_the_gateway() -> None:
    (cfg,) = [c for t, c in device_configs(GW, BULB, "homeassistant").items() if "/light/" in t]
    state = {"on": True, "brightness": 40, "color_temp": 2700, "ts": "2026-11-26T10:00:00Z"}
    assert render(cfg["state_template"], value_json=state) == "on"
    assert render(cfg["brightness_template"], value_json=state) == "102"
    assert render(cfg["color_temp_template"], value_json=state) == "2700"
    on = render(cfg["command_on_template"], brightness=255, color_temp=3000)
    assert validate_command(BULB, on) == {"on": True, "brightness": 100, "color_temp": 3000}
    assert validate_command(BULB, render(cfg["command_on_template"])) == {"on": True}
    assert validate_command(BULB, render(cfg["command_off_template"])) == {"on": False}
    assert (cfg["min_kelvin"], cfg["max_kelvin"]) == (2203, 6536)


def test_switch_payloads_are_valid_commands() -> None:
    (cfg,) = [c for t, c in device_configs(GW, PLUG, "homeassistant").items() if "/switch/" in t]
    assert validate_command(PLUG, cfg["payload_on"]) == {"on": True}
    assert validate_command(PLUG, cfg["payload_off"]) == {"on": False}
    assert render(cfg["value_template"], value_json={"on": False}) == cfg["state_off"]
    assert cfg["device_class"] == "outlet"


def test_sensors_have_units_and_classes() -> None:
    configs = device_configs(GW, PLUG, "homeassistant")
    power = configs[f"homeassistant/sensor/{GW}_{PLUG.id}/power/config"]
    assert (power["device_class"], power["unit_of_measurement"]) == ("power", "W")
    energy = configs[f"homeassistant/sensor/{GW}_{PLUG.id}/energy/config"]
    assert energy["state_class"] == "total_increasing"
    assert render(power["value_template"], value_json={"power": 61.5}) == "61.5"


def test_contact_sensor_is_on_when_open() -> None:
    cfg = device_configs(GW, DOOR, "homeassistant")[
        f"homeassistant/binary_sensor/{GW}_{DOOR.id}/contact/config"
    ]
    assert cfg["device_class"] == "door"
    assert render(cfg["value_template"], value_json={"contact": True}) == "OFF"  # closed
    assert render(cfg["value_template"], value_json={"contact": False}) == "ON"  # open


def test_speaker_volume_mute_and_announce() -> None:
    configs = device_configs(GW, SPEAKER, "homeassistant")
    volume = configs[f"homeassistant/number/{GW}_{SPEAKER.id}/volume/config"]
    assert validate_command(SPEAKER, render(volume["command_template"], value=35.0)) == {"volume": 35}
    say = configs[f"homeassistant/notify/{GW}_{SPEAKER.id}/say/config"]
    assert validate_command(SPEAKER, render(say["command_template"], value='晚饭好了 "快来"')) == {
        "say": '晚饭好了 "快来"'
    }


def test_the_gateway_itself_is_announced() -> None:
    topic, cfg = bridge_config(GW, "homeassistant")
    assert topic == f"homeassistant/binary_sensor/{GW}_gateway/status/config"
    assert cfg["device"]["identifiers"] == [f"bfy_{GW}"]
    assert cfg["state_topic"] == f"home/{GW}/status"
