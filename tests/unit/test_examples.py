"""`cloud alert example`: every colour is a valid CAP 1.2 alert with the right level and target."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cloud_bridge.cap import alert_problems, expires_utc, parse_cap_xml, priority, regions, sent_utc
from cloud_bridge.examples import COLOURS, rainstorm_alert


@pytest.mark.parametrize(("colour", "level"), [("red", 1), ("orange", 2), ("yellow", 3), ("blue", 4)])
def test_each_colour_is_valid_cap_with_its_level(colour: str, level: int) -> None:
    now = datetime(2026, 7, 20, 1, 2, 3, tzinfo=UTC)
    alert = parse_cap_xml(rainstorm_alert(colour, "2101", now=now))
    assert alert_problems(alert) == []
    assert priority(alert) == level
    assert regions(alert) == ["2101"]
    assert sent_utc(alert) == now
    assert [i.language for i in alert.infos] == ["zh-CN", "en-US"]
    zh = alert.infos[0]
    assert zh.headline == f"沈阳市气象台发布暴雨{COLOURS[colour].zh}预警信号"
    assert expires_utc(zh) is not None and expires_utc(zh) > now  # type: ignore[operator]


def test_identifiers_differ_and_bad_regions_are_refused() -> None:
    a, b = (parse_cap_xml(rainstorm_alert()) for _ in range(2))
    assert a.alert_id != b.alert_id
    assert parse_cap_xml(rainstorm_alert(status="Exercise")).status == "Exercise"
    with pytest.raises(ValueError, match="not a region code"):
        rainstorm_alert(region="21<x>")
