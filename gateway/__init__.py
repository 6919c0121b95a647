"""Beifang Home Gateway: the daemon on the set-top box (北方云家庭网关)."""

__version__ = "0.1.0"

__all__ = ["__version__"]
