"""Ready-to-send examples for demos, drills and installer checks: CAP alerts (`cloud alert
example`) and service definitions (`cloud service example shop|gov`).

The rainstorm warning signal follows the China Meteorological Administration's four colours
(蓝/黄/橙/红, thresholds from the published signal definitions) in the shape of a national
early-warning release (国家预警信息发布中心, 12379): zh-CN first, en-US alongside, and the
target as a `行政区划代码` geocode. Times are now; the identifier is new each call.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from importlib.resources import files
from string import Template
from typing import Any

from cloud_bridge.protocol import region_prefixes

__all__ = ["COLOURS", "SERVICE_EXAMPLES", "rainstorm_alert", "service_example"]

_CST = timezone(timedelta(hours=8), "CST")


@dataclass(frozen=True, slots=True)
class _Colour:
    zh: str
    en: str
    severity: str
    hours: int
    rain_mm: int
    instruction_zh: str
    instruction_en: str


COLOURS = {
    "blue": _Colour("蓝色", "Blue", "Minor", 12, 50,
                    "做好防暴雨准备；注意防范道路积水和低洼地带内涝。",
                    "Get ready for heavy rain; watch for standing water and flooding in low ground."),
    "yellow": _Colour("黄色", "Yellow", "Moderate", 6, 50,
                      "驾驶人员注意道路积水和交通阻塞，确保安全；检查排水系统，做好排涝准备。",
                      "Drivers: watch for flooded roads and traffic jams. Check drains; be ready to pump."),
    "orange": _Colour("橙色", "Orange", "Severe", 3, 50,
                      "切断有危险的室外电源，暂停户外作业；处于危险地带的单位应当停课、停业。",
                      "Cut dangerous outdoor power and stop outdoor work; schools and businesses in danger "
                      "zones close."),
    "red": _Colour("红色", "Red", "Extreme", 3, 100,
                   "停止集会、停课、停业（除特殊行业外）；远离河道、山体，做好山洪、滑坡、泥石流防御。",
                   "Stop gatherings, close schools and businesses (except essential services); keep away "
                   "from rivers and slopes: flash floods, landslides and mudflows are likely."),
}  # fmt: skip

# A few names for the demo's regions; any other code is shown as the code.
_PLACES = {
    "21": "辽宁省",
    "2101": "辽宁省沈阳市",
    "210102": "辽宁省沈阳市和平区",
    "210103": "辽宁省沈阳市沈河区",
    "2102": "辽宁省大连市",
    "210202": "辽宁省大连市中山区",
}


def _place(region: str) -> str:
    return _PLACES.get(region, f"行政区划 {region}")


def rainstorm_alert(
    colour: str = "orange",
    region: str = "210102",
    *,
    status: str = "Actual",
    lifetime: timedelta = timedelta(hours=6),
    now: datetime | None = None,
) -> bytes:
    """A CAP 1.2 rainstorm warning signal of `colour` for `region`, sent `now`."""
    c = COLOURS[colour]
    region_prefixes(region)  # ValueError for anything that is not a region code
    sent = (now or datetime.now(UTC)).astimezone(_CST).replace(microsecond=0)
    area = _place(region)
    sender = area.removeprefix("辽宁省") or area
    template = Template(files("cloud_bridge").joinpath("templates/rainstorm_zh.xml").read_text("utf-8"))
    text = template.substitute(
        identifier=f"{region}-RAIN-{sent:%Y%m%d%H%M%S}-{secrets.token_hex(3)}",
        region=region,
        sent=sent.isoformat(),
        expires=(sent + lifetime).isoformat(),
        status=status,
        severity=c.severity,
        sender_zh=f"{sender}气象台",
        time_zh=f"{sent:%Y年%m月%d日%H时%M分}",
        colour_zh=c.zh,
        colour_en=c.en,
        hours=c.hours,
        rain=c.rain_mm,
        instruction_zh=c.instruction_zh,
        instruction_en=c.instruction_en,
        area_zh=area,
    )
    return text.encode()


SERVICE_EXAMPLES = ("shop", "gov")


def service_example(kind: str, *, today: datetime | None = None) -> dict[str, Any]:
    """A shop (北方云鲜生: dairy and grain, delivery in Liaoning) or the Shenyang government
    services (a notice, a social-insurance lookup, appointments on the next three working days)."""
    if kind not in SERVICE_EXAMPLES:
        raise ValueError(f"no example {kind!r}; choose from {', '.join(SERVICE_EXAMPLES)}")
    text = files("cloud_bridge").joinpath(f"templates/{kind}_example.json").read_text("utf-8")
    service: dict[str, Any] = json.loads(text)
    if kind == "gov":
        day = (today or datetime.now(_CST)).astimezone(_CST).date()
        days: list[date] = []
        while len(days) < 3:
            day += timedelta(days=1)
            if day.weekday() < 5:
                days.append(day)
        for appointment in service["appointments"]:
            appointment["slots"] = [
                {
                    "id": f"{d:%m%d}-{hour:02d}00",
                    "start": f"{d.isoformat()}T{hour:02d}:00:00+08:00",
                    "capacity": 5,
                }
                for d in days
                for hour in (9, 10, 14)
            ]
        for notice in service["notices"]:
            notice["published"] = (today or datetime.now(_CST)).astimezone(_CST).date().isoformat()
    return service
