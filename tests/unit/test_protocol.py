"""The cloud link's wire protocol: canonical JSON, Ed25519 signatures, freshness, regions.

Hypothesis throws arbitrary bytes and byte mutations of real signed alerts at the parser and
verifier: nothing that was altered may be accepted, and nothing may raise anything but
SignatureError.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud_bridge.cap import parse_cap_xml
from cloud_bridge.protocol import (
    MAX_ENVELOPE_BYTES,
    SignatureError,
    Signer,
    TrustedKey,
    TrustStore,
    canonical_json,
    check_fresh,
    new_envelope,
    parse_envelope,
    region_matches,
    region_prefixes,
    utc_now,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cap"
SIGNER = Signer.generate()
OTHER = Signer.generate()


def _trust(*signers: Signer) -> TrustStore:
    return TrustStore(TrustedKey(kid=s.kid, public_key=s.public_key_b64()) for s in signers)


TRUST = _trust(SIGNER)


def _signed_alert() -> bytes:
    alert = parse_cap_xml((FIXTURES / "cn_rainstorm_orange_zh.xml").read_bytes())
    payload = {"alert": alert.model_dump(mode="json"), "alert_id": alert.alert_id, "targets": ["2101"]}
    return SIGNER.sign(new_envelope("alert", payload)).to_bytes()


SIGNED_ALERT = _signed_alert()


def _accepts(raw: bytes) -> dict[str, object] | None:
    """The signed content if `raw` parses and verifies; None if refused with SignatureError."""
    try:
        envelope = parse_envelope(raw)
        TRUST.verify(envelope)
    except SignatureError:
        return None
    return envelope.signable()


def test_a_signed_alert_verifies_and_round_trips() -> None:
    envelope = parse_envelope(SIGNED_ALERT)
    TRUST.verify(envelope)
    assert envelope.kid == SIGNER.kid
    assert parse_envelope(envelope.to_bytes()) == envelope


def test_canonical_json_ignores_key_order_and_refuses_nan() -> None:
    assert canonical_json({"b": 1, "a": "北方"}) == canonical_json({"a": "北方", "b": 1})
    assert canonical_json({"a": "北方"}) == '{"a":"北方"}'.encode()
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda e: e.model_copy(update={"sig": None}), "unsigned"),
        (lambda e: e.model_copy(update={"kid": OTHER.kid}), "unknown_key"),
        (lambda e: e.model_copy(update={"sig": "not base64!"}), "bad_signature"),
        (lambda e: e.model_copy(update={"payload": {**e.payload, "targets": ["21"]}}), "bad_signature"),
        (lambda e: e.model_copy(update={"type": "command"}), "bad_signature"),
        (lambda e: OTHER.sign(e).model_copy(update={"kid": SIGNER.kid}), "bad_signature"),
    ],
    ids=["unsigned", "unknown-key", "garbage-signature", "wider-region", "other-type", "other-signer"],
)
def test_tampering_is_refused_with_its_reason(mutate: object, reason: str) -> None:
    envelope = parse_envelope(SIGNED_ALERT)
    with pytest.raises(SignatureError) as caught:
        TRUST.verify(mutate(envelope))  # type: ignore[operator]
    assert caught.value.reason == reason


def test_a_retired_key_stops_verifying_after_its_end() -> None:
    envelope = parse_envelope(SIGNED_ALERT)
    ended = utc_now() - timedelta(seconds=1)
    store = TrustStore(
        [TrustedKey(kid=SIGNER.kid, public_key=SIGNER.public_key_b64(), not_after=ended.isoformat())]
    )
    with pytest.raises(SignatureError) as caught:
        store.verify(envelope)
    assert caught.value.reason == "expired_key"


def test_a_trust_entry_must_match_its_key_id() -> None:
    with pytest.raises(Exception, match="does not match its key id"):
        TrustStore([TrustedKey(kid=OTHER.kid, public_key=SIGNER.public_key_b64())])


def test_freshness_window() -> None:
    now = utc_now()
    old = new_envelope("alert", {}, ts=now - timedelta(hours=2))
    ahead = new_envelope("alert", {}, ts=now + timedelta(minutes=10))
    check_fresh(new_envelope("alert", {}, ts=now - timedelta(minutes=59)), max_age=timedelta(hours=1))
    for envelope, reason in ((old, "stale"), (ahead, "future")):
        with pytest.raises(SignatureError) as caught:
            check_fresh(envelope, max_age=timedelta(hours=1), now=now)
        assert caught.value.reason == reason


def test_oversized_envelopes_are_refused_before_parsing() -> None:
    with pytest.raises(SignatureError) as caught:
        parse_envelope(b"{" + b" " * MAX_ENVELOPE_BYTES + b"}")
    assert caught.value.reason == "malformed"


@pytest.mark.parametrize(
    ("region", "prefixes"),
    [
        ("21", ["21"]),
        ("2101", ["21", "2101"]),
        ("210102", ["21", "2101", "210102"]),
        ("210102001", ["21", "2101", "210102", "210102001"]),
        ("210102001002", ["21", "2101", "210102", "210102001", "210102001002"]),
    ],
)
def test_region_levels(region: str, prefixes: list[str]) -> None:
    assert region_prefixes(region) == prefixes
    assert all(region_matches(p, region) for p in prefixes)


@pytest.mark.parametrize(
    "bad", ["", "2", "210", "21010", "2101020", "21a1", "２１", "21 01", "2101021234567", "21\n"]
)
def test_region_codes_are_checked(bad: str) -> None:
    with pytest.raises(ValueError, match="not a region code"):
        region_prefixes(bad)


def test_a_region_does_not_match_its_neighbour() -> None:
    assert not region_matches("2102", "210102")
    assert not region_matches("21010", "210102")  # only whole levels


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(0, len(SIGNED_ALERT) - 1), st.integers(1, 255)), min_size=1, max_size=4)
)
def test_any_byte_mutation_of_a_signed_alert_is_refused_or_means_the_same(
    flips: list[tuple[int, int]],
) -> None:
    data = bytearray(SIGNED_ALERT)
    for index, xor in flips:
        data[index] ^= xor
    accepted = _accepts(bytes(data))
    # A mutation may only be accepted if it cannot change what was signed (for example a flip
    # inside the base64 padding bits of the signature): the signed content must be identical.
    assert accepted is None or accepted == parse_envelope(SIGNED_ALERT).signable()


@settings(max_examples=300)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_crash_the_parser(raw: bytes) -> None:
    assert _accepts(raw) is None


@settings(max_examples=200)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=20,
    )
)
def test_arbitrary_json_is_refused_without_a_signature(value: object) -> None:
    raw = json.dumps(value).encode()
    assert _accepts(raw) is None
