"""Simulated device firmware: real network programs that behave like devices' own firmware.

None of them knows the gateway exists (DESIGN.md, Contract 2). MQTT devices: `TasmotaPlug`
(a Tasmota plug with energy monitoring) and `Zigbee2MqttBridge` (a Zigbee2MQTT bridge with
simulated Zigbee devices). LAN devices: `TvSimulator` and `SpeakerSimulator` (the operator's
terminal profile over HTTP, found by mDNS) and `CoapDevice` (IPSO objects over CoAP), with
misbehaving twins for hostile-LAN tests. `firmware_sim.hostile` is a rogue LAN device that
performs one attack on demand (fake terminals, a CoAP device, MQTT and HTTP attacks), each
bounded and reported. `run_household()` runs a whole home; `firmware-sim` is the CLI.
"""

from firmware_sim._mqtt import (
    DEFAULT_BROKER_URL,
    BrokerUrlError,
    FirmwareSimError,
    LinkDown,
    parse_mqtt_url,
)
from firmware_sim.coap import CoapDevice, HostileCoapDevice
from firmware_sim.hostile import (
    ATTACKS,
    BigIntCoapDevice,
    HugeEventTerminal,
    HugeInfoTerminal,
    ImpostorTerminal,
    NestedJsonTerminal,
    TerminalFlood,
)
from firmware_sim.household import (
    LIVING_ROOM_PLUG_MAC,
    Simulator,
    household_simulators,
    lan_simulators,
    on_private_lan,
    run_household,
)
from firmware_sim.tasmota import TasmotaPlug
from firmware_sim.terminal import HostileTerminal, SpeakerSimulator, TvSimulator
from firmware_sim.zigbee2mqtt import DeviceKind, Zigbee2MqttBridge, ZigbeeDevice, default_devices

__all__ = [
    "ATTACKS",
    "DEFAULT_BROKER_URL",
    "LIVING_ROOM_PLUG_MAC",
    "BigIntCoapDevice",
    "BrokerUrlError",
    "CoapDevice",
    "DeviceKind",
    "FirmwareSimError",
    "HostileCoapDevice",
    "HostileTerminal",
    "HugeEventTerminal",
    "HugeInfoTerminal",
    "ImpostorTerminal",
    "LinkDown",
    "NestedJsonTerminal",
    "Simulator",
    "SpeakerSimulator",
    "TasmotaPlug",
    "TerminalFlood",
    "TvSimulator",
    "Zigbee2MqttBridge",
    "ZigbeeDevice",
    "default_devices",
    "household_simulators",
    "lan_simulators",
    "on_private_lan",
    "parse_mqtt_url",
    "run_household",
]
