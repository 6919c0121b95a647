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


def devices_table(
    devices: Iterable[Mapping[str, Any]], *, title: str = "设备 Devices", addresses: bool = False
) -> Table:
    """`devices` are DeviceView dicts (`info`, `state`, `online`, `approved`). `addresses`: show
    where each device answers (what an installer checks before approving)."""
    table = Table(title=title, title_justify="left", expand=False)
    table.add_column("ID", style="cyan", no_wrap=True)
    table.add_column("名称 Name")
    table.add_column("房间 Room")
    table.add_column("类型 Kind")
    table.add_column("协议 Protocol")
    if addresses:
        table.add_column("地址 Address", no_wrap=True)
    table.add_column("在线 Online")
    table.add_column("状态 State")
    for dev in devices:
        info = dev["info"]
        online = (
            Text("在线 online", style="green") if dev.get("online") else Text("离线 offline", style="red")
        )
        where = [info.get("address", "")] if addresses else []
        table.add_row(
            info["id"],
            info["name"],
            info.get("room", ""),
            info["kind"],
            info["protocol"],
            *where,
            online,
            format_state(dev.get("state") or {}),
        )
    return table


_LEVELS = {1: ("红色 red", "bold white on red"), 2: ("橙色 orange", "bold black on dark_orange"),
           3: ("黄色 yellow", "bold black on yellow"), 4: ("蓝色 blue", "bold white on blue")}  # fmt: skip
_STATES = {"active": "生效 active", "acknowledged": "已确认 acknowledged", "expired": "已过期 expired",
           "cancelled": "已解除 cancelled"}  # fmt: skip


def alerts_table(alerts: Iterable[Mapping[str, Any]], *, title: str) -> Table:
    """`alerts` as the gateway's `/api/v1/alerts` lists them."""
    table = Table(title=title, title_justify="left", expand=False)
    table.add_column("ID", style="cyan", no_wrap=True)
    table.add_column("级别 Level", no_wrap=True)
    table.add_column("状态 State", no_wrap=True)
    table.add_column("标题 Headline")
    for alert in alerts:
        name, style = _LEVELS.get(int(alert.get("level", 4)), ("?", ""))
        state = str(alert.get("state", ""))
        drill = " 演练 drill" if alert.get("drill") else ""
        table.add_row(str(alert["id"]), Text(name + drill, style=style), _STATES.get(state, state),
                      str(alert.get("headline", "")))  # fmt: skip
    return table
