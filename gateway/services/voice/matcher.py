"""Sentence matching: the product's sentences first, then the public home-assistant-intents.

Both are hassil templates. The product's sets (sentences/*.yaml) cover what households say to
an operator's TV and speaker; home-assistant-intents (zh-CN, en) fills in the general home
control phrasings, mapped onto the product's intents. Slot values come from the registry.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import home_assistant_intents
import yaml
from hassil import Intents, recognize
from hassil.filter import filter_intents
from hassil.intents import RangeSlotList, SlotList, TextSlotList, WildcardSlotList

from gateway.model import Kind
from gateway.services.voice.vocabulary import (
    CHANNELS,
    GOV_SERVICES,
    INPUTS,
    KIND_WORDS,
    ROOMS_EN,
    SCENES,
    UNITS,
)

__all__ = ["LANGUAGES", "Match", "Matcher", "base_language"]

log = logging.getLogger(__name__)

LANGUAGES = ("zh-CN", "en")
# Public intents we map onto our own, and what each becomes.
_HA_INTENTS = {
    "HassTurnOn": "BfyTurnOn",
    "HassTurnOff": "BfyTurnOff",
    "HassLightSet": "BfyBrightnessSet",
    "HassClimateGetTemperature": "BfyTemperature",
    "HassSetVolume": "BfyVolumeSet",
    "HassMediaPlayerMute": "BfyMute",
    "HassMediaPlayerUnmute": "BfyUnmute",
    "HassNevermind": "BfyCancel",
}
_HA_DOMAINS = {"light", "switch", "media_player", "climate", "sensor", "binary_sensor", "fan"}
_DOMAIN_KIND = {"light": Kind.LIGHT, "media_player": Kind.TV, "switch": Kind.PLUG, "fan": Kind.PLUG}
# Lists the public templates name that a home like ours has nothing for.
_EMPTY_LISTS = ("floor", "zone", "timer_name", "shopping_list_item", "todo_list_item")


def base_language(lang: str) -> str:
    return "zh-CN" if lang.lower().startswith("zh") else "en"


@dataclass(frozen=True, slots=True)
class Match:
    intent: str
    slots: Mapping[str, Any] = field(default_factory=dict)
    source: str = "product"  # or "public"


@dataclass(frozen=True, slots=True)
class Entity:
    """A registry device as the matcher sees it."""

    id: str
    name: str
    room: str
    kind: Kind


def _product(lang: str) -> Intents:
    text = resources.files("gateway.services.voice").joinpath(f"sentences/{lang}.yaml").read_text("utf-8")
    return Intents.from_dict(yaml.safe_load(text))


def _public(lang: str) -> Intents | None:
    data = home_assistant_intents.get_intents(lang)
    if data is None:
        return None
    return filter_intents(Intents.from_dict(data), intent_names=set(_HA_INTENTS), domains=_HA_DOMAINS)


class Matcher:
    """Compiled once per language; `set_home()` when devices or rooms change."""

    def __init__(self) -> None:
        self._product = {lang: _product(lang) for lang in LANGUAGES}
        self._public = {lang: _public(lang) for lang in LANGUAGES}
        self._lists: dict[str, dict[str, SlotList]] = {lang: self._static_lists(lang) for lang in LANGUAGES}
        self.entities: dict[str, Entity] = {}

    @staticmethod
    def _static_lists(lang: str) -> dict[str, SlotList]:
        lists: dict[str, SlotList] = {
            "device_kind": TextSlotList.from_tuples(list(KIND_WORDS[lang].items()), name="device_kind"),
            "channel": TextSlotList.from_tuples(list(CHANNELS[lang].items()), name="channel"),
            "channel_number": RangeSlotList(name="channel_number", start=1, stop=999),
            "input_source": TextSlotList.from_tuples(list(INPUTS[lang].items()), name="input_source"),
            "scene": TextSlotList.from_tuples(list(SCENES[lang].items()), name="scene"),
            "gov_service": TextSlotList.from_tuples(list(GOV_SERVICES[lang].items()), name="gov_service"),
            "unit": TextSlotList.from_strings(list(UNITS[lang]), name="unit"),
            "quantity": RangeSlotList(name="quantity", start=1, stop=99),
            "percent": RangeSlotList(name="percent", start=0, stop=100),
            "item": WildcardSlotList(name="item"),
            "query": WildcardSlotList(name="query"),
            "name": TextSlotList.from_strings([], name="name"),
            "area": TextSlotList.from_strings([], name="area"),
        }
        for empty in _EMPTY_LISTS:
            lists[empty] = TextSlotList.from_strings([], name=empty)
        return lists

    def set_home(self, entities: Iterable[Entity]) -> None:
        """Device names and rooms, in both languages, become slot values."""
        self.entities = {e.id: e for e in entities}
        rooms = sorted({e.room for e in self.entities.values() if e.room})
        zh_names = [(e.name, e.id) for e in self.entities.values() if e.name]
        self._lists["zh-CN"]["name"] = TextSlotList.from_tuples(zh_names, name="name")
        self._lists["zh-CN"]["area"] = TextSlotList.from_tuples([(r, r) for r in rooms], name="area")
        en_rooms = [(alias, room) for room in rooms for alias in ROOMS_EN.get(room, ())]
        self._lists["en"]["area"] = TextSlotList.from_tuples(en_rooms, name="area")
        # English names: "<room> <kind>" when that names exactly one device.
        kind_word = {Kind.LIGHT: "light", Kind.TV: "tv", Kind.SPEAKER: "speaker", Kind.PLUG: "plug"}
        counts: dict[tuple[str, Kind], list[str]] = {}
        for e in self.entities.values():
            if e.room in ROOMS_EN and e.kind in kind_word:
                counts.setdefault((e.room, e.kind), []).append(e.id)
        en_names = [
            (f"{ROOMS_EN[room][0]} {kind_word[kind]}", ids[0])
            for (room, kind), ids in counts.items()
            if len(ids) == 1
        ]
        en_names += [(e.name, e.id) for e in self.entities.values() if e.name.isascii() and e.name]
        self._lists["en"]["name"] = TextSlotList.from_tuples(en_names, name="name")

    def resolve(self, slots: Mapping[str, Any]) -> frozenset[str]:
        """The devices the slots name (by name, or by room and kind): what a request targets."""
        if "name" in slots:
            return frozenset({str(slots["name"])})
        kind = slots.get("device_kind")
        area = slots.get("area")
        if kind is None and area is None:
            return frozenset()
        return frozenset(
            e.id
            for e in self.entities.values()
            if (kind is None or e.kind == Kind(kind)) and (area is None or e.room == area)
        )

    def match(self, text: str, lang: str) -> Match | None:
        lang = base_language(lang)
        lists = self._lists[lang]
        result = recognize(text, self._product[lang], slot_lists=lists, language=lang)
        if result is not None:
            return _refine(
                Match(result.intent.name, {k: v.value for k, v in result.entities.items()}, "product"), lang
            )
        return self.match_public(text, lang)

    def match_public(self, text: str, lang: str) -> Match | None:
        """The fallback alone: the public home-assistant-intents sentences, mapped onto the
        product's intents (also the voice benchmark's baseline)."""
        lang = base_language(lang)
        public = self._public[lang]
        if public is None:
            return None
        result = recognize(text, public, slot_lists=self._lists[lang], language=lang)
        if result is None:
            return None
        slots: dict[str, Any] = {k: v.value for k, v in result.entities.items()}
        domain = slots.pop("domain", None)
        if isinstance(domain, str) and domain in _DOMAIN_KIND:
            slots.setdefault("device_kind", _DOMAIN_KIND[domain])
        if "brightness" in slots:
            slots["percent"] = slots.pop("brightness")
        if "volume_level" in slots:
            slots["percent"] = slots.pop("volume_level")
        return Match(_HA_INTENTS[result.intent.name], slots, "public")


_MEDIA_LEAD = ("一首", "首", "一下", "一个", "个", "一部", "部", "一集")


def _refine(match: Match, lang: str) -> Match:
    """Fix-ups the templates cannot express: a channel asked for like a programme is a channel,
    and a media query does not start with its measure word (放一首X → X)."""
    if match.intent != "BfyMedia":
        return match
    query = str(match.slots.get("query", "")).strip()
    for lead in _MEDIA_LEAD:
        if query.startswith(lead) and len(query) > len(lead):
            query = query[len(lead) :]
            break
    channel = CHANNELS[lang].get(query) if lang in CHANNELS else None
    if channel is not None:
        return Match("BfyChannel", {"channel": channel}, match.source)
    return Match("BfyMedia", {**match.slots, "query": query}, match.source)
