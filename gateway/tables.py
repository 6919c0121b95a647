"""Terminal tables of devices (rich), shared by `gateway devices` and `gateway demo`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rich.table import Table
from rich.text import Text

from gateway.model import CAPABILITIES

__all__ = ["devices_table", "format_state"]

_SHOWN_FIRST = ("on", "brightness", "color_temp", "temperature", "humidity", "power", "energy")


def _fmt(cap: str, value: Any) -> str:
    if isinstance(value, bool):
        if cap == "contact":
            return "关 closed" if value else "开 open"
        if cap in ("motion", "smoke"):
            return "有 yes" if value else "无 no"
        return "开 on" if value else "关 off"
    spec = CAPABILITIES.get(cap)
    unit = spec.unit if spec and spec.unit else ""
    if isinstance(value, float):
        value = f"{value:.3f}".rstrip("0").rstrip(".") if abs(value) < 100 else f"{value:.1f}"
    if isinstance(value, dict):
        return "…"
    return f"{value}{' ' + unit if unit and unit != '%' else unit}"


def format_state(state: Mapping[str, Any]) -> str:
    keys = [k for k in _SHOWN_FIRST if k in state] + sorted(
        k for k in state if k not in _SHOWN_FIRST and k != "ts"
    )
    return "  ".join(f"{k} {_fmt(k, state[k])}" for k in keys)


def devices_table(devices: Iterable[Mapping[str, Any]], *, title: str = "设备 Devices") -> Table:
    """`devices` are DeviceView dicts (`info`, `state`, `online`, `approved`)."""
    table = Table(title=title, title_justify="left", expand=False)
    table.add_column("ID", style="cyan", no_wrap=True)
    table.add_column("名称 Name")
    table.add_column("房间 Room")
    table.add_column("类型 Kind")
    table.add_column("协议 Protocol")
    table.add_column("在线 Online")
    table.add_column("状态 State")
    for dev in devices:
        info = dev["info"]
        online = (
            Text("在线 online", style="green") if dev.get("online") else Text("离线 offline", style="red")
        )
        table.add_row(
            info["id"],
            info["name"],
            info.get("room", ""),
            info["kind"],
            info["protocol"],
            online,
            format_state(dev.get("state") or {}),
        )
    return table
