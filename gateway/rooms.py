"""Rooms: a suggested room for a new device from its own name ("客厅灯" → 客厅).

Only a suggestion for devices that arrive without one; the household's choice always wins.
"""

from __future__ import annotations

__all__ = ["COMMON_ROOMS", "suggest_room"]

#: Common room names in Chinese homes (longest first when matching) and English ones.
COMMON_ROOMS: tuple[str, ...] = (
    "客厅", "主卧", "次卧", "卧室", "儿童房", "老人房", "书房", "厨房", "餐厅", "卫生间", "洗手间",
    "浴室", "阳台", "走廊", "过道", "玄关", "门厅", "车库", "储物间", "衣帽间", "花园",
    "living room", "bedroom", "kitchen", "dining room", "bathroom", "study", "hallway", "garage",
    "balcony", "garden", "office", "nursery",
)  # fmt: skip
_ALIASES = {"入户": "玄关", "大门": "玄关", "进门": "玄关"}


def suggest_room(name: str) -> str:
    """The room a device's name starts with, or ""."""
    text = name.strip()
    lowered = text.lower()
    for prefix, room in _ALIASES.items():
        if text.startswith(prefix):
            return room
    for room in sorted(COMMON_ROOMS, key=len, reverse=True):
        if lowered.startswith(room):
            return room if room.isascii() is False else room.title()
    return ""
