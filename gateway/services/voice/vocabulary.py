"""Words the voice service knows besides the registry's device names and rooms.

Data only: rooms in English, device kinds, TV channels and inputs, scenes, government
services, units, and the conversion of Chinese numerals (二十六 → 26) where a number is meant.
"""

from __future__ import annotations

import re

from gateway.model import Kind

__all__ = [
    "CHANNELS",
    "GOV_SERVICES",
    "INPUTS",
    "KIND_WORDS",
    "ROOMS_EN",
    "SCENES",
    "UNITS",
    "normalize",
    "zh_number",
]

#: Room → English names (the first is used in answers).
ROOMS_EN: dict[str, tuple[str, ...]] = {
    "客厅": ("living room", "lounge", "sitting room"),
    "卧室": ("bedroom",),
    "主卧": ("master bedroom", "main bedroom"),
    "次卧": ("second bedroom", "guest bedroom"),
    "儿童房": ("kids room", "children's room", "nursery"),
    "书房": ("study", "office"),
    "厨房": ("kitchen",),
    "餐厅": ("dining room",),
    "卫生间": ("bathroom", "toilet"),
    "浴室": ("bathroom",),
    "阳台": ("balcony",),
    "走廊": ("hallway", "corridor"),
    "玄关": ("entrance", "entryway", "hall"),
    "车库": ("garage",),
}

#: Spoken words for a kind of device, per language.
KIND_WORDS: dict[str, dict[str, Kind]] = {
    "zh-CN": {
        **dict.fromkeys(
            ("灯", "灯光", "电灯", "吊灯", "台灯", "落地灯", "吸顶灯", "筒灯", "射灯", "床头灯"), Kind.LIGHT
        ),
        **dict.fromkeys(("电视", "电视机"), Kind.TV),
        **dict.fromkeys(("音箱", "音响", "喇叭", "智能音箱"), Kind.SPEAKER),
        **dict.fromkeys(("插座", "插头", "排插"), Kind.PLUG),
        **dict.fromkeys(("开关",), Kind.SWITCH),
    },
    "en": {
        **dict.fromkeys(("light", "lights", "lamp", "lamps"), Kind.LIGHT),
        **dict.fromkeys(("tv", "television", "telly"), Kind.TV),
        **dict.fromkeys(("speaker", "speakers"), Kind.SPEAKER),
        **dict.fromkeys(("plug", "socket", "outlet"), Kind.PLUG),
        **dict.fromkeys(("switch",), Kind.SWITCH),
    },
}

_CCTV_ZH = "一二三四五六七八九"


def _channels() -> dict[str, dict[str, int]]:
    zh: dict[str, int] = {}
    en: dict[str, int] = {}
    for n in range(1, 18):
        digits = str(n)
        words = [f"中央{digits}台", f"中央{digits}套", f"CCTV{digits}", f"CCTV-{digits}", f"cctv{digits}"]
        if n <= 9:
            words += [f"中央{_CCTV_ZH[n - 1]}台", f"中央{_CCTV_ZH[n - 1]}套"]
        for w in words:
            zh[w] = n
        en[f"cctv {digits}"] = n
        en[f"cctv{digits}"] = n
    provincial = {
        "辽宁卫视": 21,
        "北京卫视": 22,
        "东方卫视": 23,
        "湖南卫视": 24,
        "浙江卫视": 25,
        "江苏卫视": 26,
        "沈阳新闻": 31,
    }
    zh.update(provincial)
    en.update({"liaoning tv": 21, "beijing tv": 22, "dragon tv": 23, "hunan tv": 24})
    return {"zh-CN": zh, "en": en}


#: Channel names → the operator's channel numbers in Liaoning.
CHANNELS = _channels()

INPUTS: dict[str, dict[str, str]] = {
    "zh-CN": {
        **dict.fromkeys(("HDMI1", "HDMI 1", "hdmi1", "高清1", "高清一", "HDMI一"), "hdmi1"),
        **dict.fromkeys(("HDMI2", "HDMI 2", "hdmi2", "高清2", "高清二", "HDMI二"), "hdmi2"),
        **dict.fromkeys(("AV", "av"), "av"),
        **dict.fromkeys(("电视信号", "有线电视", "机顶盒"), "tv"),
    },
    "en": {
        **dict.fromkeys(("hdmi 1", "hdmi1", "hdmi one"), "hdmi1"),
        **dict.fromkeys(("hdmi 2", "hdmi2", "hdmi two"), "hdmi2"),
        **dict.fromkeys(("av",), "av"),
        **dict.fromkeys(("tv", "cable", "set top box"), "tv"),
    },
}

SCENES: dict[str, dict[str, str]] = {
    "zh-CN": {
        **dict.fromkeys(("回家", "到家", "我回来了"), "home"),
        **dict.fromkeys(("离家", "出门", "我出门了", "外出"), "away"),
        **dict.fromkeys(("睡眠", "睡觉", "晚安", "我要睡觉了"), "sleep"),
        **dict.fromkeys(("观影", "影院", "看电影"), "movie"),
    },
    "en": {
        **dict.fromkeys(("home", "i'm home", "i am home"), "home"),
        **dict.fromkeys(("away", "leaving", "i'm leaving", "i am leaving"), "away"),
        **dict.fromkeys(("sleep", "night", "good night", "goodnight"), "sleep"),
        **dict.fromkeys(("movie", "cinema"), "movie"),
    },
}

GOV_SERVICES: dict[str, dict[str, str]] = {
    "zh-CN": {
        **dict.fromkeys(("社保", "社保缴费", "社保记录", "养老保险"), "social_insurance"),
        **dict.fromkeys(("医保", "医保余额"), "medical_insurance"),
        **dict.fromkeys(("水费", "水费账单"), "water_bill"),
        **dict.fromkeys(("电费", "电费账单"), "electricity_bill"),
        **dict.fromkeys(("燃气费", "煤气费", "天然气费"), "gas_bill"),
    },
    "en": {
        **dict.fromkeys(("social insurance", "pension"), "social_insurance"),
        **dict.fromkeys(("medical insurance",), "medical_insurance"),
        **dict.fromkeys(("water bill",), "water_bill"),
        **dict.fromkeys(("electricity bill", "power bill"), "electricity_bill"),
        **dict.fromkeys(("gas bill",), "gas_bill"),
    },
}

UNITS: dict[str, tuple[str, ...]] = {
    "zh-CN": ("箱", "瓶", "盒", "袋", "斤", "个", "件", "包", "桶", "提", "份"),
    "en": ("boxes", "box", "bottles", "bottle", "packs", "pack", "cases", "case", "bags", "bag"),
}

_DIGIT = {
    "零": 0,
    "〇": 0,
    "一": 1,
    "二": 2,
    "两": 2,
    "三": 3,
    "四": 4,
    "五": 5,
    "六": 6,
    "七": 7,
    "八": 8,
    "九": 9,
}
_NUMERAL = "零〇一二三四五六七八九十百两"
# A Chinese numeral is meant as a number when a unit follows it or "set to" precedes it.
_NUMBER_RE = re.compile(
    rf"(?P<pre>到|为|成|至|百分之|第)?(?P<num>[{_NUMERAL}]+)(?P<post>度|%|％|频道|个台|台|套|箱|瓶|盒|袋|斤|个|件|包|桶|提|份)?"
)
_PERCENT_RE = re.compile(rf"百分之([{_NUMERAL}]+|\d+)")
_FULLWIDTH = str.maketrans("０１２３４５６７８９％", "0123456789%")


def zh_number(text: str) -> int | None:
    """二十六 → 26, 一百零五 → 105, 两 → 2, 三五 → 35 (digit by digit); None if not a numeral."""
    if not text or any(c not in _NUMERAL for c in text):
        return None
    if "十" not in text and "百" not in text:
        return int("".join(str(_DIGIT[c]) for c in text))
    total, current = 0, 0
    for c in text:
        if c == "百":
            total += (current or 1) * 100
            current = 0
        elif c == "十":
            total += (current or 1) * 10
            current = 0
        else:
            current = _DIGIT[c]
    return total + current


def normalize(text: str, lang: str) -> str:
    """Trim punctuation, fold full-width digits, and turn meant numbers into digits."""
    text = text.translate(_FULLWIDTH).strip()
    text = re.sub(r"[。，,！!？?、；;：:~～…]+|(?<!\d)\.(?!\d)", " ", text).strip()
    if not lang.lower().startswith("zh"):
        return re.sub(r"\s+", " ", text.lower())

    def repl(m: re.Match[str]) -> str:
        pre, num, post = m.group("pre") or "", m.group("num"), m.group("post") or ""
        # "一点"/"一下"/"一些" are not numbers, and neither is a lone 一 without context.
        if not pre and not post:
            return m.group(0)
        if post == "台" and pre != "第" and len(num) == 1 and num in "一二三四五六七八九":
            return m.group(0)  # 中央一台: a channel name, kept as it is spoken
        if num == "一" and not pre and post in ("个", "个台", "台", "件", "份"):
            return m.group(0)  # 下一个台, 一件事: an article, not a quantity
        value = zh_number(num)
        return m.group(0) if value is None else f"{pre}{value}{post}"

    text = _PERCENT_RE.sub(
        lambda m: f"{zh_number(m.group(1)) if not m.group(1).isdigit() else m.group(1)}%", text
    )
    return _NUMBER_RE.sub(repl, text).replace(" ", "")
