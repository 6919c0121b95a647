"""Home Assistant MQTT discovery for every device (pure functions, no I/O).

Each capability becomes one entity under `<prefix>/<component>/<gw>_<device>/<capability>/config`,
pointing at the gateway's own topics (Contract 1), so a Home Assistant on the same broker picks
the whole home up unconfigured. Availability is "all" of: the gateway's status and the
device's availability. See https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery.
"""

from __future__ import annotations

import re
from typing import Any

from gateway import __version__
from gateway.model import DeviceInfo, Kind

__all__ = ["bridge_config", "device_configs", "node_id"]

_ORIGIN = {
    "name": "Beifang Home Gateway",
    "sw_version": __version__,
    "support_url": "https://www.liaoning.chinabroadnet.example/gateway",
}

# capability → (device_class, unit, state_class)
_SENSORS: dict[str, tuple[str | None, str | None, str | None]] = {
    "temperature": ("temperature", "°C", "measurement"),
    "humidity": ("humidity", "%", "measurement"),
    "battery": ("battery", "%", "measurement"),
    "power": ("power", "W", "measurement"),
    "energy": ("energy", "kWh", "total_increasing"),
    "voltage": ("voltage", "V", "measurement"),
    "current": ("current", "A", "measurement"),
    "illuminance": ("illuminance", "lx", "measurement"),
    "co": ("carbon_monoxide", "ppm", "measurement"),
    "volume": (None, "%", "measurement"),
}
# capability → (device_class, template giving ON when the HA "on" meaning holds)
_BINARY: dict[str, tuple[str, str]] = {
    # Our contact is true when closed; Home Assistant's door sensor is "on" when open.
    "contact": ("door", "{{ 'OFF' if value_json.contact else 'ON' }}"),
    "motion": ("motion", "{{ 'ON' if value_json.motion else 'OFF' }}"),
    "smoke": ("smoke", "{{ 'ON' if value_json.smoke else 'OFF' }}"),
}
_SAFE = re.compile(r"[^a-zA-Z0-9_-]")
_NAMES = {
    "on": "电源 Power",
    "brightness": "亮度 Brightness",
    "temperature": "温度 Temperature",
    "humidity": "湿度 Humidity",
    "battery": "电量 Battery",
    "power": "功率 Power",
    "energy": "用电量 Energy",
    "voltage": "电压 Voltage",
    "current": "电流 Current",
    "illuminance": "照度 Illuminance",
    "co": "一氧化碳 CO",
    "contact": "门窗 Door",
    "motion": "人体移动 Motion",
    "smoke": "烟雾 Smoke",
    "volume": "音量 Volume",
    "muted": "静音 Mute",
    "say": "播报 Announce",
}


def node_id(gateway_id: str, device_id: str) -> str:
    return _SAFE.sub("_", f"{gateway_id}_{device_id}")


def _device_block(gateway_id: str, info: DeviceInfo) -> dict[str, Any]:
    block: dict[str, Any] = {
        "identifiers": [f"bfy_{node_id(gateway_id, info.id)}"],
        "name": info.name,
        "via_device": f"bfy_{gateway_id}",
    }
    if info.manufacturer:
        block["manufacturer"] = info.manufacturer
    if info.model:
        block["model"] = info.model
    if info.room:
        block["suggested_area"] = info.room
    return block


def bridge_config(gateway_id: str, prefix: str) -> tuple[str, dict[str, Any]]:
    """The gateway itself, as a connectivity sensor (also the `via_device` of the others)."""
    topic = f"{prefix}/binary_sensor/{node_id(gateway_id, 'gateway')}/status/config"
    return topic, {
        "name": "网关 Gateway",
        "unique_id": f"{node_id(gateway_id, 'gateway')}_status",
        "device_class": "connectivity",
        "entity_category": "diagnostic",
        "state_topic": f"home/{gateway_id}/status",
        "payload_on": "online",
        "payload_off": "offline",
        "device": {
            "identifiers": [f"bfy_{gateway_id}"],
            "name": f"北方云家庭网关 {gateway_id}",
            "manufacturer": "China Broadnet Liaoning",
            "model": "Beifang Home Gateway",
            "sw_version": __version__,
        },
        "origin": _ORIGIN,
    }


def device_configs(gateway_id: str, info: DeviceInfo, prefix: str) -> dict[str, dict[str, Any]]:
    """topic → discovery payload for every entity of one device."""
    base = f"home/{gateway_id}/device/{info.id}"
    node = node_id(gateway_id, info.id)
    settable = set(info.settable) if info.controllable else set()
    common: dict[str, Any] = {
        "availability": [{"topic": f"home/{gateway_id}/status"}, {"topic": f"{base}/availability"}],
        "availability_mode": "all",
        "device": _device_block(gateway_id, info),
        "origin": _ORIGIN,
    }
    out: dict[str, dict[str, Any]] = {}

    def add(component: str, cap: str, payload: dict[str, Any]) -> None:
        out[f"{prefix}/{component}/{node}/{cap}/config"] = {
            "name": _NAMES.get(cap, cap),
            "unique_id": f"{node}_{cap}",
            "default_entity_id": f"{component}.{node}_{cap}",
            **common,
            **payload,
        }

    caps = set(info.capabilities) | settable
    if "on" in caps and info.kind is Kind.LIGHT and "on" in settable:
        light: dict[str, Any] = {
            "schema": "template",
            "state_topic": f"{base}/state",
            "command_topic": f"{base}/set",
            "state_template": "{{ 'on' if value_json.on else 'off' }}",
            "command_off_template": '{"on": false}',
        }
        on_parts = ['"on": true']
        if "brightness" in settable:
            light["brightness_template"] = "{{ (value_json.brightness | float(0) * 2.55) | round(0) | int }}"
            on_parts.append(
                '{%- if brightness is defined %}, "brightness": '
                "{{ (brightness / 2.55) | round(0) | int }}{% endif %}"
            )
        if "color_temp" in settable:
            low, high = info.ranges.get("color_temp", (2000.0, 6500.0))
            light["color_temp_kelvin"] = True
            light["min_kelvin"] = int(low)
            light["max_kelvin"] = int(high)
            light["color_temp_template"] = "{{ value_json.color_temp | int(0) }}"
            on_parts.append(
                '{%- if color_temp is defined %}, "color_temp": {{ color_temp | int }}{% endif %}'
            )
        light["command_on_template"] = "{" + on_parts[0] + "".join(on_parts[1:]) + "}"
        add("light", "on", {**light, "name": None})
    elif "on" in caps:
        if "on" in settable:
            add(
                "switch",
                "on",
                {
                    "state_topic": f"{base}/state",
                    "command_topic": f"{base}/set",
                    "value_template": "{{ 'ON' if value_json.on else 'OFF' }}",
                    "payload_on": '{"on": true}',
                    "payload_off": '{"on": false}',
                    "state_on": "ON",
                    "state_off": "OFF",
                    "device_class": "outlet" if info.kind is Kind.PLUG else "switch",
                    "name": None,
                },
            )
        else:
            add(
                "binary_sensor",
                "on",
                {
                    "state_topic": f"{base}/state",
                    "value_template": "{{ 'ON' if value_json.on else 'OFF' }}",
                    "device_class": "power",
                },
            )
    for cap, (device_class, unit, state_class) in _SENSORS.items():
        if cap not in caps:
            continue
        if cap in settable:
            low, high = info.ranges.get(cap, (0.0, 100.0))
            add(
                "number",
                cap,
                {
                    "state_topic": f"{base}/state",
                    "command_topic": f"{base}/set",
                    "value_template": f"{{{{ value_json.{cap} }}}}",
                    "command_template": f'{{"{cap}": {{{{ value | int }}}}}}',
                    "min": low,
                    "max": high,
                    "step": 1,
                    "unit_of_measurement": unit,
                },
            )
            continue
        sensor: dict[str, Any] = {
            "state_topic": f"{base}/state",
            "value_template": f"{{{{ value_json.{cap} }}}}",
        }
        if device_class:
            sensor["device_class"] = device_class
        if unit:
            sensor["unit_of_measurement"] = unit
        if state_class:
            sensor["state_class"] = state_class
        if cap == "battery":
            sensor["entity_category"] = "diagnostic"
        add("sensor", cap, sensor)
    for cap, (device_class, template) in _BINARY.items():
        if cap in caps:
            add(
                "binary_sensor",
                cap,
                {
                    "state_topic": f"{base}/state",
                    "value_template": template,
                    "device_class": device_class,
                },
            )
    if "muted" in settable:
        add(
            "switch",
            "muted",
            {
                "state_topic": f"{base}/state",
                "command_topic": f"{base}/set",
                "value_template": "{{ 'ON' if value_json.muted else 'OFF' }}",
                "payload_on": '{"muted": true}',
                "payload_off": '{"muted": false}',
                "state_on": "ON",
                "state_off": "OFF",
            },
        )
    if "say" in settable:
        add(
            "notify",
            "say",
            {"command_topic": f"{base}/set", "command_template": '{"say": {{ value | tojson }}}'},
        )
    return out
