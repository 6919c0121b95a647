"""The gateway's error hierarchy: one root, a few meaningful subclasses with structured fields."""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "CommandRejected",
    "ConfigError",
    "DeviceError",
    "GatewayError",
    "RegistryError",
]


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """The configuration file or an environment override is invalid; the message says which key."""


class BrokerError(GatewayError):
    """The MQTT broker could not be reached or refused us."""


class RegistryError(GatewayError):
    """The device registry (SQLite) could not be opened or written."""


class DeviceError(GatewayError):
    """A device (or its bridge) did not accept a command."""

    def __init__(self, device_id: str, reason: str, detail: str = "") -> None:
        super().__init__(f"{device_id}: {reason}{': ' + detail if detail else ''}")
        self.device_id = device_id
        self.reason = reason
        self.detail = detail


class CommandRejected(GatewayError):
    """A `set` command was refused before reaching the device.

    `reason` is a stable machine-readable code (documented in docs/mqtt-contract.md);
    `detail` is a human sentence that says what was wrong.
    """

    def __init__(self, reason: str, detail: str, *, device_id: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.device_id = device_id
