"""The voice matcher against the labelled utterances (tests/fixtures/voice/utterances.yaml).

Accuracy and speed are reported by bench/bench_voice.py; here every labelled utterance must
be understood right: the intent, what it targets, and the values it carries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.model import Kind
from gateway.services.voice.matcher import Entity, Matcher
from gateway.services.voice.vocabulary import normalize, zh_number

DATA = yaml.safe_load(
    (Path(__file__).resolve().parents[1] / "fixtures" / "voice" / "utterances.yaml").read_text()
)
TARGET_SLOTS = ("name", "area", "device_kind")


@pytest.fixture(scope="module")
def matcher() -> Matcher:
    m = Matcher()
    m.set_home(Entity(h["id"], h["name"], h["room"], Kind(h["kind"])) for h in DATA["home"])
    return m


def same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return float(a) == float(b)
    return str(a) == str(b)


def test_the_labelled_set_is_big_and_bilingual() -> None:
    langs = [u["lang"] for u in DATA["utterances"]]
    assert len(langs) >= 200
    assert langs.count("zh-CN") >= 120 and langs.count("en") >= 60


@pytest.mark.parametrize("u", DATA["utterances"], ids=lambda u: f"{u['lang']}:{u['text']}")
def test_each_labelled_utterance(matcher: Matcher, u: dict[str, Any]) -> None:
    got = matcher.match(normalize(u["text"], u["lang"]), u["lang"])
    if u["intent"] is None:
        assert got is None, f"should not match, got {got}"
        return
    assert got is not None, "no match"
    assert got.intent == u["intent"]
    want = u["slots"] or {}
    assert matcher.resolve(got.slots) == matcher.resolve(want), f"targets: got {got.slots}"
    for key, value in want.items():
        if key not in TARGET_SLOTS:
            assert same(got.slots.get(key), value), f"{key}: got {got.slots.get(key)!r}"


@pytest.mark.parametrize(
    ("words", "number"),
    [("二十六", 26), ("一百零五", 105), ("两", 2), ("十", 10), ("十二", 12), ("三五", 35), ("九十九", 99)],
)
def test_chinese_numerals(words: str, number: int) -> None:
    assert zh_number(words) == number


def test_numbers_are_converted_only_where_meant() -> None:
    assert normalize("电视音量调到二十", "zh-CN") == "电视音量调到20"
    assert normalize("把灯调到百分之三十", "zh-CN") == "把灯调到30%"
    assert normalize("音量调大一点", "zh-CN") == "音量调大一点"
    assert normalize("换到中央一台", "zh-CN") == "换到中央一台"
    assert normalize("下一个台", "zh-CN") == "下一个台"
    assert normalize("Turn ON the Light.", "en") == "turn on the light"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40), st.sampled_from(["zh-CN", "en"]))
def test_any_text_is_matched_or_not_without_errors(matcher: Matcher, text: str, lang: str) -> None:
    result = matcher.match(normalize(text, lang), lang)
    assert result is None or result.intent.startswith("Bfy")
