"""The LAN parsers at the edge: TXT records, CoRE link format, SenML, server-sent events.

Arbitrary bytes must only ever produce each parser's documented error, never anything else.
"""

from __future__ import annotations

import asyncio
import json

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from zeroconf import ServiceInfo

from gateway.devices.coap import parse_links
from gateway.devices.mdns import load_rules, parse_txt
from gateway.devices.senml import CT_SENML_CBOR, CT_SENML_JSON, SenMLError, parse_senml
from gateway.devices.terminal import TerminalTxt, parse_sse


def txt_properties(raw: bytes) -> dict[bytes, bytes | None]:
    """Decode TXT rdata with zeroconf's own DNS codec, as it arrives off the wire."""
    return ServiceInfo("_x._tcp.local.", "a._x._tcp.local.", properties=raw).properties


def test_txt_decoding_drops_what_is_not_valid() -> None:
    entries = [b"id=ab", b"kind=tv", b"flag", b"bad=\xff\xfe\x80", "é=no".encode(), "name=客厅".encode()]
    raw = b"".join(bytes([len(e)]) + e for e in entries)
    txt, bad = parse_txt(txt_properties(raw))
    assert txt == {"id": "ab", "kind": "tv", "flag": "", "name": "客厅"}
    assert bad == 2


@given(st.binary(max_size=600))
def test_txt_parser_on_arbitrary_rdata(raw: bytes) -> None:
    txt, bad = parse_txt(txt_properties(raw))
    assert bad >= 0
    for key, value in txt.items():
        assert key == key.lower() and "=" not in key
        assert isinstance(value, str)
    try:
        TerminalTxt.model_validate(txt)
    except ValidationError:
        pass


def test_links_parse_with_attributes() -> None:
    links = parse_links(
        b'</3/0>;rt="urn:oma:lwm2m:oma:3";ct="110 112";obs,</3303/0>;rt="urn:oma:lwm2m:ext:3303";obs'
    )
    assert [link.href for link in links] == ["/3/0", "/3303/0"]
    assert links[1].attrs["rt"] == "urn:oma:lwm2m:ext:3303"
    assert links[0].attrs["ct"] == "110 112"
    assert "obs" in links[0].attrs


def test_oversized_link_format_is_refused() -> None:
    with pytest.raises(ValueError, match="larger than"):
        parse_links(b"</x>," * 20000)


@given(st.binary(max_size=400))
def test_link_parser_on_arbitrary_bytes(raw: bytes) -> None:
    try:
        links = parse_links(raw)
    except ValueError:
        return
    assert all(link.href.startswith("/") for link in links)


PACK = [
    {"bn": "/3303/0/", "bt": 1764144000, "n": "5700", "v": 21.5, "u": "Cel"},
    {"n": "5701", "vs": "Cel"},
    {"n": "5500", "vb": True, "t": 1},
]


def test_senml_json_and_cbor_resolve_the_same() -> None:
    as_json = parse_senml(json.dumps(PACK).encode(), CT_SENML_JSON)
    labels = {"bn": -2, "bt": -3, "n": 0, "u": 1, "v": 2, "vs": 3, "vb": 4, "t": 6}
    as_cbor = parse_senml(cbor2.dumps([{labels[k]: v for k, v in r.items()} for r in PACK]), CT_SENML_CBOR)
    assert as_json == as_cbor
    assert [(r.name, r.value) for r in as_json] == [
        ("/3303/0/5700", 21.5),
        ("/3303/0/5701", "Cel"),
        ("/3303/0/5500", True),
    ]
    assert as_json[2].time == 1764144001


@pytest.mark.parametrize(
    "payload",
    [
        b"{}",
        b"[1]",
        b'[{"n": "x"}]',
        b'[{"n": 5, "v": 1}]',
        b'[{"n": "x", "v": "1"}]',
        b'[{"n": "x", "v": 1, "vb": true}]',
        b"\xff",
    ],
)
def test_malformed_senml_is_refused(payload: bytes) -> None:
    with pytest.raises(SenMLError):
        parse_senml(payload, CT_SENML_JSON)


@given(st.binary(max_size=400), st.sampled_from([CT_SENML_JSON, CT_SENML_CBOR]))
def test_senml_parser_on_arbitrary_bytes(raw: bytes, content_format: int) -> None:
    try:
        parse_senml(raw, content_format)
    except SenMLError:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda c: (
        st.lists(c, max_size=3)
        | st.dictionaries(st.sampled_from(["bn", "n", "v", "vs", "vb", "bt", "t", "u", "x"]), c, max_size=4)
    ),
    max_leaves=12,
)


@given(st.lists(json_values, max_size=5))
def test_senml_parser_on_arbitrary_json(pack: list[object]) -> None:
    try:
        records = parse_senml(json.dumps(pack).encode(), CT_SENML_JSON)
    except SenMLError:
        return
    for record in records:
        assert record.name


async def _collect(lines: list[str]) -> list[object]:
    async def gen():  # type: ignore[no-untyped-def]
        for line in lines:
            yield line

    return [e async for e in parse_sse(gen())]


def test_sse_events_comments_and_multiline_data() -> None:
    events = asyncio.run(
        _collect(
            [
                "retry: 3000",
                "id: 1",
                "event: state",
                'data: {"on":',
                "data: true}",
                "",
                ": ping",
                "data: x",
                "",
            ]
        )
    )
    assert events[0].event == "state" and events[0].data == '{"on":\ntrue}' and events[0].id == "1"  # type: ignore[union-attr]
    assert events[1] is None
    assert events[2].event == "message" and events[2].data == "x"  # type: ignore[union-attr]


@given(st.lists(st.text(max_size=40), max_size=30))
def test_sse_parser_on_arbitrary_lines(lines: list[str]) -> None:
    for event in asyncio.run(_collect(lines)):
        assert event is None or isinstance(event.data, str)


def test_the_rules_table_compiles_and_matches() -> None:
    rules = load_rules()
    assert {r.type for r in rules} >= {
        "_googlecast._tcp",
        "_airplay._tcp",
        "_raop._tcp",
        "_spotify-connect._tcp",
        "_hap._tcp",
        "_matter._tcp",
        "_printer._tcp",
    }
    with pytest.raises(KeyError):
        load_rules('[[rule]]\ntype = "_x._tcp"\nkind = "tv"\n')  # no identity
