"""Device adapters: one module per protocol or device profile."""

from gateway.devices.base import Adapter, DeviceSink, Found

__all__ = ["Adapter", "DeviceSink", "Found"]
