"""CAP 1.2 intake: fixtures, identity, priority/regions/language, hostile XML, schema and
data-dictionary refusals, and properties (cloud_bridge.cap)."""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud_bridge.cap import (
    MAX_CAP_BYTES,
    Alert,
    Area,
    CapError,
    Circle,
    Info,
    NameValue,
    Reference,
    alert_identity,
    alert_problems,
    expires_utc,
    lang_order,
    parse_cap_json,
    parse_cap_xml,
    priority,
    regions,
    sent_utc,
)
from cloud_bridge.protocol import BridgeError

CAP_DIR = Path(__file__).parents[1] / "fixtures" / "cap"
ALL_FIXTURES = sorted(p.name for p in CAP_DIR.glob("*.xml"))
HOSTILE_TIMEOUT_S = 30


def load(name: str) -> bytes:
    return (CAP_DIR / name).read_bytes()


def parsed(name: str) -> Alert:
    return parse_cap_xml(load(name))


def refused(data: bytes) -> list[str]:
    with pytest.raises(CapError) as info:
        parse_cap_xml(data)
    return info.value.reasons


def json_refused(data: Any) -> list[str]:
    with pytest.raises(CapError) as info:
        parse_cap_json(data)
    return info.value.reasons


def minimal_xml(*, head: str = "", info: str | None = None, tail: str = "", msg_type: str = "Alert") -> bytes:
    body = (
        "<identifier>T-1</identifier><sender>test@example.org</sender>"
        "<sent>2024-08-01T09:30:00+08:00</sent><status>Test</status>"
        f"<msgType>{msg_type}</msgType><scope>Public</scope>{head}"
    )
    if info is None:
        info = (
            "<info><category>Met</category><event>Test</event><urgency>Immediate</urgency>"
            "<severity>Minor</severity><certainty>Observed</certainty>"
            "<area><areaDesc>x</areaDesc></area></info>"
        )
    return f'<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">{body}{info}{tail}</alert>'.encode()


def minimal_json(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "sender": "test@example.org",
        "identifier": "T-1",
        "sent": "2024-08-01T09:30:00+08:00",
        "status": "Test",
        "msg_type": "Alert",
        "scope": "Public",
        "infos": [
            {
                "categories": ["Met"],
                "event": "Test",
                "urgency": "Immediate",
                "severity": "Minor",
                "certainty": "Observed",
                "areas": [{"description": "x"}],
            }
        ],
    }
    data.update(changes)
    return data


# --------------------------------------------------------------------------- fixtures


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_every_fixture_parses_and_round_trips(name: str) -> None:
    alert = parsed(name)
    assert alert_problems(alert) == []
    assert Alert.model_validate_json(alert.model_dump_json()) == alert
    assert parse_cap_json(alert.model_dump_json().encode()) == alert
    assert parse_cap_json(alert.model_dump(mode="json")) == alert


def test_fixture_readme_names_every_file() -> None:
    readme = (CAP_DIR / "README.md").read_text(encoding="utf-8")
    for name in ALL_FIXTURES:
        assert f"`{name}`" in readme


EXPECTED = {
    # name: (msg_type, priority, regions, languages in zh-CN household order)
    "oasis_a1_homeland_security.xml": ("Alert", 2, [], ["en-US"]),
    "oasis_a2_thunderstorm.xml": ("Alert", 2, [], ["en-US"]),
    "oasis_a2_thunderstorm_cap_prefix.xml": ("Alert", 2, [], ["en-US"]),
    "oasis_a3_earthquake_update.xml": ("Update", 4, [], ["en-US"]),
    "oasis_a4_amber_alert.xml": ("Alert", 2, [], ["en-US", "es-US"]),
    "nws_coastal_flood_advisory.xml": ("Alert", 4, [], ["en-US"]),
    "nws_fire_weather_watch_cancel.xml": ("Cancel", 4, [], ["en-US"]),
    "pelmorex_naads_signed.xml": ("Alert", 3, [], ["en-CA"]),
    "cn_rainstorm_orange_zh.xml": ("Alert", 2, ["210102", "210103"], ["zh-CN", "en-US"]),
    "cn_rainstorm_red_update_zh.xml": ("Update", 1, ["210102"], ["zh-CN"]),
}


def test_expectations_cover_every_fixture() -> None:
    assert sorted(EXPECTED) == ALL_FIXTURES


@pytest.mark.parametrize(("name", "expected"), sorted(EXPECTED.items()))
def test_fixture_priority_regions_and_language(
    name: str, expected: tuple[str, int, list[str], list[str]]
) -> None:
    msg_type, level, codes, languages = expected
    alert = parsed(name)
    assert alert.msg_type == msg_type
    assert priority(alert) == level
    assert regions(alert) == codes
    assert [info.language for info in lang_order(alert)] == languages


def test_thunderstorm_content() -> None:
    alert = parsed("oasis_a2_thunderstorm.xml")
    assert (alert.sender, alert.identifier, alert.sent) == (
        "KSTO@NWS.NOAA.GOV",
        "KSTO1055887203",
        "2003-06-17T14:57:00-07:00",
    )
    info = alert.infos[0]
    assert info.language == "en-US"
    assert info.response_types == ["Shelter"]
    assert info.event_codes == [NameValue(name="SAME", value="SVR")]
    area = info.areas[0]
    assert area.polygons == [
        [(38.47, -120.14), (38.34, -119.95), (38.52, -119.74), (38.62, -119.89), (38.47, -120.14)]
    ]
    assert [g.value for g in area.geocodes] == ["006109", "006009", "006003"]
    assert sent_utc(alert) == datetime(2003, 6, 17, 21, 57, tzinfo=UTC)
    assert expires_utc(info) == datetime(2003, 6, 17, 23, 0, tzinfo=UTC)


def test_prefixed_namespace_gives_the_same_alert() -> None:
    assert parsed("oasis_a2_thunderstorm_cap_prefix.xml") == parsed("oasis_a2_thunderstorm.xml")


def test_earthquake_circle_and_reference() -> None:
    alert = parsed("oasis_a3_earthquake_update.xml")
    assert alert.infos[0].areas[0].circles == [Circle(lat=32.9525, lon=-115.5527, radius_km=0.0)]
    assert alert.references == [
        Reference(sender="trinet@caltech.edu", identifier="TRI13970876.1", sent="2003-06-11T20:30:00-07:00")
    ]
    assert expires_utc(alert.infos[0]) is None


def test_signed_message_is_accepted_and_the_signature_ignored() -> None:
    alert = parsed("pelmorex_naads_signed.xml")
    assert alert.codes == ["profile:CAP-CP:0.4", "layer:SOREM:1.0"]
    assert "SignatureValue" not in alert.model_dump_json()
    assert "X509" not in alert.model_dump_json()
    unsigned = load("pelmorex_naads_signed.xml")
    unsigned = unsigned[: unsigned.index(b"\t<Signature")] + b"</alert>\n"
    assert parse_cap_xml(unsigned) == alert


def test_cancel_keeps_its_reference() -> None:
    alert = parsed("nws_fire_weather_watch_cancel.xml")
    assert [r.identifier for r in alert.references] == [
        "urn:oid:2.49.0.1.840.0.1b30bfeb3d4f67abd849b064811d657a163f2249.001.1"
    ]


def test_empty_optional_elements_become_none() -> None:
    alert = parse_cap_xml(minimal_xml(head="<note></note>"))
    assert alert.note is None


# --------------------------------------------------------------------------- identity


def test_alert_id_is_sha256_of_sender_identifier_and_utc_sent() -> None:
    expected = hashlib.sha256(b"KSTO@NWS.NOAA.GOV\nKSTO1055887203\n2003-06-17T21:57:00Z").hexdigest()[:24]
    assert parsed("oasis_a2_thunderstorm.xml").alert_id == expected


@pytest.mark.parametrize(
    "sent",
    ["2003-06-17T14:57:00-07:00", "2003-06-17T21:57:00-00:00", "2003-06-17T21:57:00+00:00",
     "2003-06-18T05:57:00+08:00", "2003-06-17T21:57:00Z", "2003-06-17T16:27:00-05:30"],
)  # fmt: skip
def test_same_instant_in_any_zone_is_the_same_alert(sent: str) -> None:
    original = parsed("oasis_a2_thunderstorm.xml")
    assert alert_identity("KSTO@NWS.NOAA.GOV", "KSTO1055887203", sent) == original.alert_id
    assert (
        Reference(sender="KSTO@NWS.NOAA.GOV", identifier="KSTO1055887203", sent=sent).alert_id
        == original.alert_id
    )


def test_update_references_name_the_earlier_alert_across_time_zones() -> None:
    orange = parsed("cn_rainstorm_orange_zh.xml")
    red = parsed("cn_rainstorm_red_update_zh.xml")
    assert len(red.references) == 2
    assert orange.sent == "2024-08-01T09:30:00+08:00"
    assert red.references[1].sent == "2024-08-01T01:30:00-00:00"
    assert red.references[1].alert_id == orange.alert_id
    assert red.references[0].alert_id != orange.alert_id


def test_different_instants_or_senders_differ() -> None:
    base = alert_identity("a@b", "X", "2024-08-01T09:30:00+08:00")
    assert alert_identity("a@b", "X", "2024-08-01T09:30:01+08:00") != base
    assert alert_identity("a@c", "X", "2024-08-01T09:30:00+08:00") != base
    assert alert_identity("a@b", "Y", "2024-08-01T09:30:00+08:00") != base


# --------------------------------------------------------------------------- priority, regions, language


def info(**changes: Any) -> Info:
    data: dict[str, Any] = {"categories": ["Met"], "event": "x", "urgency": "Immediate", "severity": "Minor",
                            "certainty": "Observed"}  # fmt: skip
    data.update(changes)
    return Info.model_validate(data)


def alert_with(*infos: Info, msg_type: str = "Alert") -> Alert:
    return Alert.model_validate(minimal_json(msg_type=msg_type) | {"infos": [i.model_dump() for i in infos]})


@pytest.mark.parametrize(
    ("severity", "level"), [("Extreme", 1), ("Severe", 2), ("Moderate", 3), ("Minor", 4), ("Unknown", 4)]
)
def test_priority_from_severity(severity: str, level: int) -> None:
    assert priority(alert_with(info(severity=severity))) == level


def test_priority_takes_the_most_severe_info() -> None:
    assert (
        priority(alert_with(info(severity="Minor"), info(severity="Severe"), info(severity="Moderate"))) == 2
    )


@pytest.mark.parametrize(
    ("changes", "level"),
    [
        ({"severity": "Severe", "parameters": [{"name": "预警级别", "value": "蓝色"}]}, 4),
        ({"severity": "Minor", "parameters": [{"name": "预警级别", "value": "红色预警"}]}, 1),
        ({"severity": "Minor", "parameters": [{"name": "AlertColor", "value": "Orange"}]}, 2),
        (
            {
                "severity": "Moderate",
                "parameters": [{"name": "layer:EC-MSC-SMC:1.1:Colour", "value": "yellow"}],
            },
            3,
        ),
        ({"severity": "Minor", "parameters": [{"name": "预警级别", "value": "Ⅱ级/严重"}]}, 2),
        ({"severity": "Minor", "parameters": [{"name": "预警级别", "value": "特别重大"}]}, 1),
        ({"severity": "Minor", "headline": "沈阳市气象台发布暴雨红色预警信号"}, 1),
        ({"severity": "Extreme", "headline": "大风蓝色预警"}, 4),
        ({"severity": "Minor", "event": "寒潮黄色预警"}, 3),
        ({"severity": "Minor", "parameters": [{"name": "HSAS", "value": "RED"}]}, 4),  # not a level parameter
    ],
)
def test_a_named_colour_wins_over_severity(changes: dict[str, Any], level: int) -> None:
    assert priority(alert_with(info(**changes))) == level


@pytest.mark.parametrize(
    ("simplified", "traditional", "expected"),
    [
        ("红色", "紅色", 1), ("黄色", "黃色", 3), ("蓝色", "藍色", 4), ("橙色", "橙色", 2),
        ("特别重大", "特別重大", 1), ("较大", "較大", 3), ("IV级", "IV級", 4), ("Ⅲ级", "Ⅲ級", 3),
    ],
)  # fmt: skip
def test_traditional_colour_words_set_the_level_like_simplified_ones(
    simplified: str, traditional: str, expected: int
) -> None:
    def level(word: str, where: str) -> int:
        if where == "parameter":
            return priority(
                alert_with(info(severity="Unknown", parameters=[{"name": "預警級別", "value": word}]))
            )
        return priority(alert_with(info(severity="Unknown", headline=f"暴雨{word}預警信號")))

    severe = alert_with(info(severity="Severe", parameters=[{"name": "預警級別", "value": traditional}]))
    assert level(traditional, "parameter") == level(simplified, "parameter") == expected == priority(severe)
    if simplified.endswith("色"):
        assert level(traditional, "headline") == level(simplified, "headline") == expected


def test_colour_comes_from_the_most_severe_info_only() -> None:
    quiet = info(severity="Minor", headline="暴雨红色预警")
    loud = info(severity="Severe")
    assert priority(alert_with(quiet, loud)) == 2


def test_past_urgency_never_raises_priority() -> None:
    assert priority(alert_with(info(severity="Extreme", urgency="Past"))) == 4
    assert priority(alert_with(info(severity="Extreme", urgency="Past", headline="暴雨红色预警"))) == 4
    assert priority(alert_with(info(severity="Extreme", urgency="Past"), info(severity="Moderate"))) == 3
    assert priority(parsed("nws_fire_weather_watch_cancel.xml")) == 4  # Severe but Past


def test_priority_of_a_cancel_without_info_is_lowest() -> None:
    assert priority(alert_with(msg_type="Cancel")) == 4


def test_colour_in_the_chinese_fixture_decides() -> None:
    data = load("cn_rainstorm_orange_zh.xml").replace(
        b"<value>\xe6\xa9\x99\xe8\x89\xb2</value>", "<value>红色</value>".encode()
    )
    assert priority(parse_cap_xml(data)) == 1


def area_with(*geocodes: tuple[str, str]) -> Area:
    return Area(description="x", geocodes=[NameValue(name=n, value=v) for n, v in geocodes])


def test_regions_accept_the_documented_names_and_lengths() -> None:
    areas = [
        area_with(("行政区划代码", "210102"), ("GB/T 2260", "2101"), ("gb2260", "21")),
        area_with(("ADCODE", "210102001"), ("areaCode", "210102001001"), ("area_code", "220000")),
        area_with(("SAME", "006109"), ("UGC", "TXZ049"), ("行政区划代码", "12345"), ("行政区划代码", "00")),
        area_with(
            ("行政区划代码", "\uff12\uff11\uff10\uff11\uff10\uff12"),
            ("行政区划代码", "210102"),
            ("GB/T2260", " 210103 "),
        ),
    ]
    alert = alert_with(info(areas=[a.model_dump() for a in areas]))
    assert regions(alert) == ["210102", "2101", "21", "210102001", "210102001001", "22", "210103"]


@pytest.mark.parametrize(
    ("value", "code"),
    [("210000", "21"), ("210100", "2101"), ("210102", "210102"), ("210102000000", "210102"),
     ("210100000000", "2101"), ("210102001000", "210102001"), ("000000", None)],
)  # fmt: skip
def test_region_padding_is_trimmed_to_its_level(value: str, code: str | None) -> None:
    alert = alert_with(info(areas=[area_with(("行政区划代码", value)).model_dump()]))
    assert regions(alert) == ([code] if code else [])


def test_language_order() -> None:
    infos = [info(language=tag) for tag in ("en-US", "zh-TW", "zh-CN", "fr")]
    alert = alert_with(*infos)
    assert [i.language for i in lang_order(alert)] == ["zh-CN", "zh-TW", "en-US", "fr"]
    assert [i.language for i in lang_order(alert, "zh")] == ["zh-TW", "zh-CN", "en-US", "fr"]
    assert [i.language for i in lang_order(alert, "ZH-cn")] == ["zh-CN", "zh-TW", "en-US", "fr"]
    assert [i.language for i in lang_order(alert, "de")] == ["en-US", "zh-TW", "zh-CN", "fr"]
    amber = parsed("oasis_a4_amber_alert.xml")
    assert [i.language for i in lang_order(amber, "es")] == ["es-US", "en-US"]


# --------------------------------------------------------------------------- hostile XML

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>&lol9;</identifier></alert>"""


def with_entity(declaration: str, use: str = "&xxe;") -> bytes:
    return minimal_xml(head=f"<note>{use}</note>").replace(
        b"<alert", f'<?xml version="1.0"?>\n<!DOCTYPE alert [\n {declaration}\n]>\n<alert'.encode(), 1
    )


HOSTILE = {
    "billion_laughs": BILLION_LAUGHS,
    "external_entity_file": with_entity('<!ENTITY xxe SYSTEM "file:///etc/passwd">'),
    "external_entity_http": with_entity('<!ENTITY xxe SYSTEM "http://203.0.113.1/cap.dtd">'),
    "parameter_entity_http": with_entity(
        '<!ENTITY % ext SYSTEM "http://203.0.113.1/evil.dtd"> %ext;', use=""
    ),
    "external_dtd": minimal_xml().replace(
        b"<alert", b'<!DOCTYPE alert SYSTEM "http://203.0.113.1/cap.dtd">\n<alert', 1
    ),
    "plain_doctype": minimal_xml().replace(b"<alert", b"<!DOCTYPE alert>\n<alert", 1),
    "quadratic_blowup": with_entity(f'<!ENTITY a "{"x" * 50_000}">', use="&a;" * 1000),
    "xinclude": minimal_xml(
        head='<note><xi:include xmlns:xi="http://www.w3.org/2001/XInclude" '
        'href="file:///etc/passwd" parse="text"/></note>'
    ),
    "garbage": bytes(range(256)) * 4,
    "empty": b"",
    "not_xml": b'{"sender": "json, not xml"}',
    "truncated": load("oasis_a2_thunderstorm.xml")[:700],
    "cap_1_1_namespace": minimal_xml().replace(b"cap:1.2", b"cap:1.1"),
    "wrong_root": b"<html><body>alert</body></html>",
    "utf16_garbage": b"\xff\xfe<\x00a\x00",
    "foreign_element_at_the_end": minimal_xml(tail='<x:extra xmlns:x="urn:example:not-dsig"/>'),
}


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Fail on any Python-level connection attempt (libxml2's own I/O is off by parser options,
    and the test namespace has no network anyway)."""
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise OSError("network use in a CAP parser test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield attempts
    assert attempts == []


@pytest.mark.timeout(HOSTILE_TIMEOUT_S)
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_xml_is_refused(name: str, no_network: list[object]) -> None:
    reasons = refused(HOSTILE[name])
    text = " ".join(reasons)
    assert "root:" not in text  # nothing of /etc/passwd
    assert "lollollol" not in text


@pytest.mark.timeout(HOSTILE_TIMEOUT_S)
@pytest.mark.parametrize(
    "name", ["billion_laughs", "external_entity_file", "external_entity_http", "plain_doctype"]
)
def test_dtds_are_refused_as_such(name: str) -> None:
    assert "document type declarations" in refused(HOSTILE[name])[0]


def test_the_lxml_stage_alone_neither_expands_nor_fetches(no_network: list[object]) -> None:
    """Defence in depth: even past the expat gate, the hardened lxml parser substitutes nothing."""
    from lxml import etree  # type: ignore[import-untyped]

    from cloud_bridge import cap

    for name in ("billion_laughs", "external_entity_file", "external_entity_http", "parameter_entity_http"):
        try:
            root = etree.fromstring(HOSTILE[name], cap._hardened_parser())
        except etree.XMLSyntaxError:
            continue  # libxml2's own amplification limit refused it: also fine
        text = "".join(root.itertext())
        assert "root:" not in text
        assert len(text) < 1000


@pytest.mark.timeout(HOSTILE_TIMEOUT_S)
def test_fifty_megabytes_are_refused_before_parsing(no_network: list[object]) -> None:
    body = b"<alert>" + b"A" * (50 * 1024 * 1024) + b"</alert>"
    reasons = refused(body)
    assert reasons == [f"body is {len(body)} bytes; the limit is {MAX_CAP_BYTES}"]
    assert json_refused(body)[0].startswith("body is")


def test_the_size_limit_is_a_keyword() -> None:
    data = load("oasis_a2_thunderstorm.xml")
    with pytest.raises(CapError, match="the limit is 1000"):
        parse_cap_xml(data, max_bytes=1000)
    assert parse_cap_xml(data, max_bytes=len(data)).identifier == "KSTO1055887203"


def test_non_bytes_are_refused() -> None:
    with pytest.raises(CapError):
        parse_cap_xml("<alert/>")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- schema refusals


def test_missing_identifier_reads_well() -> None:
    data = load("oasis_a2_thunderstorm.xml").replace(b"<identifier>KSTO1055887203</identifier>", b"")
    (reason,) = refused(data)
    assert reason.startswith("alert/sender (line 6):")
    assert "Expected is ( identifier )" in reason
    assert "{urn:" not in reason


def test_bad_status_reads_well() -> None:
    data = load("oasis_a2_thunderstorm.xml").replace(b"<status>Actual</status>", b"<status>Bogus</status>")
    (reason,) = refused(data)
    assert reason.startswith("alert/status (line 8):")
    assert "'Bogus'" in reason
    assert "Actual" in reason


def test_schema_error_paths_name_the_info_and_work_with_prefixes() -> None:
    amber = load("oasis_a4_amber_alert.xml")
    second = amber.rindex(b"<urgency>Immediate</urgency>")
    data = amber[:second] + amber[second:].replace(b"Immediate", b"Soon", 1)
    assert [r.split(" ")[0] for r in refused(data)] == ["alert/info[2]/urgency"]
    prefixed = load("oasis_a2_thunderstorm_cap_prefix.xml").replace(
        b"Severe</cap:severity>", b"Awful</cap:severity>"
    )
    assert [r.split(" ")[0] for r in refused(prefixed)] == ["alert/info[1]/severity"]


def test_z_is_refused_in_xml() -> None:
    data = load("oasis_a2_thunderstorm.xml").replace(b"2003-06-17T14:57:00-07:00", b"2003-06-17T21:57:00Z")
    assert refused(data)[0].startswith("alert/sent")


def test_only_xml_signatures_may_follow_the_infos() -> None:
    signature = '<Signature xmlns="http://www.w3.org/2000/09/xmldsig#"><SignedInfo/></Signature>'
    assert parse_cap_xml(minimal_xml(tail=signature)).identifier == "T-1"
    assert "not expected" in refused(HOSTILE["foreign_element_at_the_end"])[0]


# --------------------------------------------------------------------------- data-dictionary refusals

POLYGON_INFO = (
    "<info><category>Met</category><event>x</event><urgency>Immediate</urgency><severity>Minor</severity>"
    "<certainty>Observed</certainty>{expires}<area><areaDesc>a</areaDesc>{shapes}</area></info>"
)


def area_xml(shapes: str, expires: str = "") -> bytes:
    good = POLYGON_INFO.format(shapes="", expires="")
    return minimal_xml(info=good + POLYGON_INFO.format(shapes=shapes, expires=expires))


AREA = "alert/info[2]/area[1]/"


@pytest.mark.parametrize(
    ("shapes", "reason"),
    [
        ("<polygon>1,1 2,2 3,1 1,2</polygon>", AREA + "polygon: ring is not closed"),
        ("<polygon>1,1 2,2 1,1</polygon>", AREA + "polygon: a polygon needs at least 4 points, got 3"),
        ("<polygon>1,1 91,2 3,1 1,1</polygon>", AREA + "polygon: latitude 91.0 is outside -90..90"),
        ("<polygon>1,1 2,181 3,1 1,1</polygon>", AREA + "polygon: longitude 181.0 is outside"),
        ("<polygon>1,1 2,x 3,1 1,1</polygon>", AREA + "polygon: point 2 '2,x' is not"),
        ("<polygon>1,1 2,nan 3,1 1,1</polygon>", AREA + "polygon: point 2 '2,nan' is not"),
        (
            "<polygon>1,1 2,2 3,1 1,1</polygon><polygon>1,1 2,2 3,1 1,2</polygon>",
            AREA + "polygon[2]: ring is not",
        ),
        ("<circle>32.9,-115.5 -1</circle>", AREA + "circle: radius -1.0 km must be zero or more"),
        ("<circle>32.9,-115.5</circle>", AREA + "circle: '32.9,-115.5' is not 'latitude,longitude"),
        ("<circle>99,0 1</circle>", AREA + "circle: latitude 99.0 is outside"),
        ("<ceiling>100</ceiling>", AREA + "ceiling: may only be given with an altitude"),
    ],
)
def test_geometry_rules(shapes: str, reason: str) -> None:
    reasons = refused(area_xml(shapes))
    assert any(r.startswith(reason) for r in reasons), reasons


def test_expires_before_sent_is_refused() -> None:
    reasons = refused(area_xml("", expires="<expires>2024-08-01T01:29:59-00:00</expires>"))
    assert reasons == ["alert/info[2]/expires: 2024-08-01T01:29:59-00:00 is before the alert was sent"]
    assert parse_cap_xml(area_xml("", expires="<expires>2024-08-01T01:30:00-00:00</expires>"))


def test_impossible_dates_are_refused() -> None:
    reasons = refused(minimal_xml().replace(b"2024-08-01T09:30:00+08:00", b"2023-02-29T09:30:00+08:00"))
    assert reasons[0].startswith("alert/sent")


@pytest.mark.parametrize(
    ("msg_type", "expected"),
    [("Update", "alert/references: required when msgType is Update"),
     ("Cancel", "alert/references: required when msgType is Cancel")],
)  # fmt: skip
def test_update_and_cancel_need_references(msg_type: str, expected: str) -> None:
    assert refused(minimal_xml(msg_type=msg_type))[0].startswith(expected)


def test_references_must_be_triples() -> None:
    data = minimal_xml(
        msg_type="Update",
        head="<references>a@b,ID-1,2024-08-01T09:00:00+08:00 just-a-word a@b,ID-2,2024-13-01T09:00:00+08:00 "
        "a@b,ID-3,2024-08-01T01:00:00Z</references>",
    )
    reasons = refused(data)
    assert reasons[0] == "alert/references: entry 2 'just-a-word' is not a sender,identifier,sent triple"
    assert reasons[1] == (
        "alert/references: entry 3: '2024-13-01T09:00:00+08:00' is not a valid date and time "
        "(month must be in 1..12)"
    )
    assert reasons[2].startswith("alert/references: entry 4 spells UTC as Z")


@pytest.mark.parametrize(
    "sent",
    ["2024-08-01T09:30:00+08:00\n", "2024-08-01T09:30:00.5+08:00", "2024-08-01T09:30:00",
     "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "2024-08-01T09:30:00+24:00",
     "\uff12024-08-01T09:30:00+08:00"],
)  # fmt: skip
def test_bad_times_are_refused_in_json(sent: str) -> None:
    assert json_refused(minimal_json(sent=sent))[0].startswith("alert/sent: ")


def test_scope_rules() -> None:
    restricted = minimal_xml().replace(b"<scope>Public</scope>", b"<scope>Restricted</scope>")
    assert refused(restricted) == ["alert/restriction: required when scope is Restricted (CAP 1.2 §3.2.1)"]
    private = minimal_xml().replace(b"<scope>Public</scope>", b"<scope>Private</scope>")
    assert refused(private) == ["alert/addresses: required when scope is Private (CAP 1.2 §3.2.1)"]
    ok = minimal_xml().replace(
        b"<scope>Public</scope>", b"<scope>Private</scope><addresses>gw-1 gw-2</addresses>"
    )
    assert parse_cap_xml(ok).addresses == "gw-1 gw-2"


def test_info_is_required_except_for_cancel() -> None:
    assert refused(minimal_xml(info="")) == [
        "alert/info: an Alert needs at least one info block (CAP 1.2 §3.2.2)"
    ]
    cancel = minimal_xml(
        info="", msg_type="Cancel", head="<references>a@b,X,2024-08-01T09:00:00+08:00</references>"
    )
    assert parse_cap_xml(cancel).infos == []


def test_identifier_may_not_contain_spaces() -> None:
    reasons = refused(minimal_xml().replace(b"<identifier>T-1</identifier>", b"<identifier>T 1</identifier>"))
    assert reasons == ["alert/identifier: must not contain spaces, commas, '<' or '&' (CAP 1.2 §3.2.1)"]


def test_all_reasons_are_listed_together() -> None:
    data = minimal_xml(msg_type="Update").replace(b"<scope>Public</scope>", b"<scope>Restricted</scope>")
    data = data.replace(
        b"<areaDesc>x</areaDesc>", b"<areaDesc>x</areaDesc><polygon>1,1 2,2 3,3 4,4</polygon>"
    )
    reasons = refused(data)
    assert len(reasons) == 3
    error = CapError(reasons)
    assert isinstance(error, BridgeError)
    for reason in reasons:
        assert reason in str(error)


# --------------------------------------------------------------------------- JSON


def test_json_accepts_z_leniently() -> None:
    alert = parse_cap_json(minimal_json(sent="2024-08-01T01:30:00Z"))
    assert alert.alert_id == alert_identity("test@example.org", "T-1", "2024-08-01T09:30:00+08:00")


def test_json_goes_through_the_same_rules() -> None:
    data = minimal_json(msg_type="Cancel", scope="Private")
    data["infos"][0] |= {"urgency": "Soon", "language": "zh_CN", "expires": "2024-08-01T00:00:00+00:00"}
    data["infos"][0]["areas"][0]["polygons"] = [[[1, 1], [2, 2], [3, 1], [1, 2]]]
    assert json_refused(data) == [
        "alert/addresses: required when scope is Private (CAP 1.2 §3.2.1)",
        "alert/references: required when msgType is Cancel (CAP 1.2 §3.2.1)",
        "alert/info[1]/language: 'zh_CN' is not an RFC 3066 language tag",
        "alert/info[1]/urgency: 'Soon' is not one of Immediate, Expected, Future, Past, Unknown",
        "alert/info[1]/expires: 2024-08-01T00:00:00+00:00 is before the alert was sent",
        "alert/info[1]/area[1]/polygon: ring is not closed (the first and last points must be equal)",
    ]


def test_json_structure_errors_use_cap_paths() -> None:
    data = minimal_json(status="Bogus", colour="red")
    del data["identifier"]
    data["infos"][0]["areas"][0]["circles"] = [{"lat": "x", "lon": 1, "radius_km": 1}]
    data["infos"][0]["expires"] = "2024-08-01 00:00"
    reasons = json_refused(data)
    assert reasons[0] == "alert/identifier: Field required"
    assert reasons[1].startswith("alert/status: Input should be 'Actual'")
    assert any(
        r.startswith("alert/info[1]/expires: '2024-08-01 00:00' is not a CAP dateTime") for r in reasons
    )
    assert any(r.startswith("alert/info[1]/area[1]/circle[1]/lat:") for r in reasons)
    assert any(r.startswith("alert/colour: Extra inputs are not permitted") for r in reasons)


@pytest.mark.parametrize("data", [b"", b"[]", b"null", b"\xff", b"{" * 100_000, b'"x"', b"{} {}"])
def test_json_garbage_is_refused(data: bytes) -> None:
    json_refused(data)


def test_json_nan_is_refused() -> None:
    data = json.dumps(minimal_json()).replace('"x"}', '"x", "altitude": NaN}').encode()
    assert json_refused(data)[0].startswith("alert/info[1]/area[1]/altitude")


# --------------------------------------------------------------------------- properties

FIXTURE_BYTES = [load(name) for name in ALL_FIXTURES]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_raise_only_cap_error(data: bytes) -> None:
    try:
        parse_cap_xml(data)
    except CapError:
        pass
    try:
        parse_cap_json(data)
    except CapError:
        pass


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_bytes_after_an_xml_head_raise_only_cap_error(tail: bytes) -> None:
    try:
        parse_cap_xml(b'<?xml version="1.0"?><alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">' + tail)
    except CapError:
        pass


MUTATION = st.tuples(
    st.sampled_from(["insert", "delete", "flip"]), st.integers(min_value=0), st.integers(0, 255)
)


def mutate(data: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    buf = bytearray(data)
    for kind, position, value in ops:
        at = position % (len(buf) + 1)
        if kind == "insert":
            buf.insert(at, value)
        elif buf:
            at = min(at, len(buf) - 1)
            if kind == "delete":
                del buf[at]
            else:
                buf[at] ^= value or 1
    return bytes(buf)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FIXTURE_BYTES), st.lists(MUTATION, min_size=1, max_size=6))
def test_mutated_fixtures_parse_or_raise_cap_error(data: bytes, ops: list[tuple[str, int, int]]) -> None:
    try:
        alert = parse_cap_xml(mutate(data, ops))
    except CapError:
        return
    assert isinstance(alert, Alert)
    assert alert_problems(alert) == []
    assert Alert.model_validate_json(alert.model_dump_json()) == alert


TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=20)
FLOAT = st.floats(allow_nan=False, allow_infinity=False)
SENT = st.builds(
    lambda d, sign, h, m, z: d.isoformat(timespec="seconds") + (f"{sign}{h:02d}:{m:02d}" if not z else "Z"),
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.sampled_from("+-"),
    st.integers(0, 14),
    st.integers(0, 59),
    st.booleans(),
)
NAME_VALUES = st.lists(st.builds(NameValue, name=TEXT, value=TEXT), max_size=3)
AREAS = st.lists(
    st.builds(
        Area,
        description=TEXT,
        polygons=st.lists(st.lists(st.tuples(FLOAT, FLOAT), max_size=5), max_size=2),
        circles=st.lists(st.builds(Circle, lat=FLOAT, lon=FLOAT, radius_km=FLOAT), max_size=2),
        geocodes=NAME_VALUES,
        altitude=st.none() | FLOAT,
        ceiling=st.none() | FLOAT,
    ),
    max_size=2,
)
INFOS = st.lists(
    st.builds(
        Info,
        language=TEXT,
        categories=st.lists(TEXT, min_size=1, max_size=3),
        event=TEXT,
        response_types=st.lists(TEXT, max_size=2),
        urgency=TEXT,
        severity=TEXT,
        certainty=TEXT,
        audience=st.none() | TEXT,
        event_codes=NAME_VALUES,
        effective=st.none() | SENT,
        onset=st.none() | SENT,
        expires=st.none() | SENT,
        sender_name=st.none() | TEXT,
        headline=st.none() | TEXT,
        description=st.none() | TEXT,
        instruction=st.none() | TEXT,
        web=st.none() | TEXT,
        contact=st.none() | TEXT,
        parameters=NAME_VALUES,
        areas=AREAS,
    ),
    max_size=2,
)
ALERTS = st.builds(
    Alert,
    sender=TEXT,
    identifier=TEXT,
    sent=SENT,
    status=st.sampled_from(["Actual", "Exercise", "System", "Test", "Draft"]),
    msg_type=st.sampled_from(["Alert", "Update", "Cancel", "Ack", "Error"]),
    scope=st.sampled_from(["Public", "Restricted", "Private"]),
    source=st.none() | TEXT,
    restriction=st.none() | TEXT,
    addresses=st.none() | TEXT,
    codes=st.lists(TEXT, max_size=2),
    note=st.none() | TEXT,
    references=st.lists(st.builds(Reference, sender=TEXT, identifier=TEXT, sent=SENT), max_size=2),
    incidents=st.lists(TEXT, max_size=2),
    infos=INFOS,
)


@settings(max_examples=200, deadline=None)
@given(ALERTS)
def test_alert_model_round_trips_through_json(alert: Alert) -> None:
    assert Alert.model_validate_json(alert.model_dump_json()) == alert
    assert isinstance(alert.alert_id, str)
    assert 1 <= priority(alert) <= 4
    ordered = lang_order(alert, "zh-CN")
    assert sorted(map(id, ordered)) == sorted(map(id, alert.infos))


def test_models_are_frozen_and_closed() -> None:
    alert = parsed("oasis_a2_thunderstorm.xml")
    with pytest.raises(ValueError, match="frozen"):
        alert.sender = "x"  # type: ignore[misc]
    with pytest.raises(ValueError, match="Extra inputs"):
        Alert.model_validate(alert.model_dump() | {"extra": 1})
