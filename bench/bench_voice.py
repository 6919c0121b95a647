"""Voice benchmark: how well and how fast transcripts are understood (CPU only, no network).

For each language of the labelled set (tests/fixtures/voice/utterances.yaml):
- intent accuracy (utterances labelled with an intent), slot accuracy (intent right and every
  labelled slot exactly right: `name`/`area`/`device_kind` by the devices they target, as
  tests/unit/test_voice.py judges them, every other slot by value), and no-match accuracy on
  what must not match;
- the time to match one utterance, p50/p99/max over every timed call after a warm-up, measured
  as the voice service calls it: `Matcher.match(normalize(text, lang), lang)`.

Baseline, measured in the same run and interleaved with the product: the public
home-assistant-intents sentences alone, through the Matcher's own fallback
(`Matcher.match_public`: the same public intents, slot lists and mapping onto the product's
intents).

Prints a table with the misses under it and writes bench/results/voice.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import yaml
from _common import machine, percentile, save, show
from rich.console import Console
from rich.markup import escape

from gateway.model import Kind
from gateway.services.voice.matcher import LANGUAGES, Entity, Match, Matcher, base_language
from gateway.services.voice.vocabulary import (
    normalize,
)

UTTERANCES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "voice" / "utterances.yaml"
TARGET_SLOTS = ("name", "area", "device_kind")

MatchFn = Callable[[str, str], Match | None]


# --- scoring ---------------------------------------------------------------------------------


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return float(a) == float(b)
    return str(a) == str(b)


def judge(matcher: Matcher, u: Mapping[str, Any], got: Match | None) -> tuple[bool, bool]:
    """(intent right, intent and every labelled slot right), as tests/unit/test_voice.py judges."""
    if u["intent"] is None:
        return got is None, got is None
    if got is None or got.intent != u["intent"]:
        return False, False
    want: Mapping[str, Any] = u["slots"] or {}
    if matcher.resolve(got.slots) != matcher.resolve(want):
        return True, False
    return True, all(_same(got.slots.get(k), v) for k, v in want.items() if k not in TARGET_SLOTS)


def _show_match(m: Match | None) -> str:
    if m is None:
        return "no match"
    slots = ", ".join(f"{k}={v}" for k, v in m.slots.items())
    return f"{m.intent}({slots})"


def _show_label(u: Mapping[str, Any]) -> str:
    if u["intent"] is None:
        return "no match"
    slots = ", ".join(f"{k}={v}" for k, v in (u["slots"] or {}).items())
    return f"{u['intent']}({slots})"


@dataclass
class Outcome:
    """One matcher over one language's utterances."""

    utterances: int = 0
    labelled: int = 0  # with an intent
    intent_ok: int = 0
    slots_ok: int = 0
    must_not: int = 0
    no_match_ok: int = 0
    times_ms: list[float] = field(default_factory=list)
    misses: list[dict[str, str]] = field(default_factory=list)

    def add(self, u: Mapping[str, Any], got: Match | None, intent_ok: bool, slots_ok: bool) -> None:
        self.utterances += 1
        if u["intent"] is None:
            self.must_not += 1
            self.no_match_ok += intent_ok
        else:
            self.labelled += 1
            self.intent_ok += intent_ok
            self.slots_ok += slots_ok
        if not slots_ok:
            self.misses.append({"text": u["text"], "expected": _show_label(u), "got": _show_match(got)})

    def summary(self) -> dict[str, Any]:
        return {
            "utterances": self.utterances,
            "intent_accuracy": self.intent_ok / self.labelled if self.labelled else None,
            "slot_accuracy": self.slots_ok / self.labelled if self.labelled else None,
            "no_match_accuracy": self.no_match_ok / self.must_not if self.must_not else None,
            "intent_ok": self.intent_ok,
            "slots_ok": self.slots_ok,
            "labelled": self.labelled,
            "no_match_ok": self.no_match_ok,
            "must_not_match": self.must_not,
            "timed_calls": len(self.times_ms),
            "p50_ms": percentile(self.times_ms, 50),
            "p99_ms": percentile(self.times_ms, 99),
            "max_ms": max(self.times_ms, default=float("nan")),
            "misses": self.misses,
        }


def _timed(fn: MatchFn, text: str, lang: str) -> tuple[Match | None, float]:
    t0 = time.perf_counter()
    got = fn(normalize(text, lang), lang)
    return got, (time.perf_counter() - t0) * 1000


def run(utterances: Sequence[Mapping[str, Any]], entities: Iterable[Entity], rounds: int) -> dict[str, Any]:
    home = list(entities)
    t0 = time.perf_counter()
    product = Matcher()
    product.set_home(home)
    product_build_s = time.perf_counter() - t0
    matchers: dict[str, MatchFn] = {"product": product.match, "baseline": product.match_public}

    # Warm-up: every utterance once through each (hassil compiles what it needs on first use);
    # what these calls return is what is scored.
    answers: dict[str, list[Match | None]] = {name: [] for name in matchers}
    first_pass_s = dict.fromkeys(matchers, 0.0)
    for u in utterances:
        for name, fn in matchers.items():
            got, ms = _timed(fn, u["text"], u["lang"])
            answers[name].append(got)
            first_pass_s[name] += ms / 1000

    outcomes = {(name, lang): Outcome() for name in matchers for lang in LANGUAGES}
    for i, u in enumerate(utterances):
        lang = base_language(u["lang"])
        for name in matchers:
            got = answers[name][i]
            outcomes[name, lang].add(u, got, *judge(product, u, got))

    # Timed rounds, product and baseline interleaved per utterance so both see the same machine.
    for _ in range(rounds):
        for u in utterances:
            lang = base_language(u["lang"])
            for name, fn in matchers.items():
                _, ms = _timed(fn, u["text"], u["lang"])
                outcomes[name, lang].times_ms.append(ms)

    return {
        "rounds": rounds,
        "build_s": product_build_s,
        "first_pass_s": first_pass_s,
        "results": {f"{name}/{lang}": o.summary() for (name, lang), o in outcomes.items()},
    }


def _pct(ok: int, n: int) -> str:
    return f"{ok / n:.1%} ({ok}/{n})" if n else "—"


def report(result: dict[str, Any], info: dict[str, str], *, baseline_misses: bool) -> None:
    rows = []
    for lang in LANGUAGES:
        for name, label in (("product", "product (own + public)"), ("baseline", "baseline (public only)")):
            s = result["results"][f"{name}/{lang}"]
            rows.append(
                [
                    lang,
                    label,
                    s["utterances"],
                    _pct(s["intent_ok"], s["labelled"]),
                    _pct(s["slots_ok"], s["labelled"]),
                    _pct(s["no_match_ok"], s["must_not_match"]),
                    f"{s['p50_ms']:.3f}",
                    f"{s['p99_ms']:.3f}",
                    f"{s['max_ms']:.3f}",
                ]
            )
    show(
        f"Voice: labelled utterances → intent and slots (hassil {version('hassil')}, "
        f"home-assistant-intents {version('home-assistant-intents')}, {result['rounds']} timed rounds)",
        [
            "lang",
            "matcher",
            "utterances",
            "intent accuracy",
            "slot accuracy",
            "no-match accuracy",
            "p50 ms",
            "p99 ms",
            "max ms",
        ],
        rows,
        info,
    )
    console = Console()
    b, f = result["build_s"], result["first_pass_s"]
    console.print(
        f"load: matcher (both sentence sets) {b:.2f} s; first (cold) pass over "
        f"the set, hassil compiling as it goes: product {f['product']:.2f} s, baseline {f['baseline']:.2f} s"
    )
    for name in ("product", "baseline"):
        misses = [(lang, m) for lang in LANGUAGES for m in result["results"][f"{name}/{lang}"]["misses"]]
        console.print(f"\n[bold]{name} misses: {len(misses)}[/bold]")
        if name == "baseline" and not baseline_misses:
            console.print("  (list them with --baseline-misses)")
            continue
        for lang, m in misses:
            console.print(
                escape(f"  [{lang}] {m['text']} → expected {m['expected']} / got {m['got']}"), soft_wrap=True
            )


def main() -> None:
    # rich wraps at 80 columns when the output is not a terminal (./scripts/bench | tee ...).
    os.environ.setdefault("COLUMNS", "150")
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=20, help="timed passes over the labelled set")
    parser.add_argument("--baseline-misses", action="store_true", help="list the baseline's misses too")
    args = parser.parse_args()
    data = yaml.safe_load(UTTERANCES.read_text("utf-8"))
    entities = [Entity(h["id"], h["name"], h["room"], Kind(h["kind"])) for h in data["home"]]
    info = machine()
    result = run(data["utterances"], entities, max(1, args.rounds))
    report(result, info, baseline_misses=args.baseline_misses)
    path = save("voice", {"machine": info, "hassil": version("hassil"),
                          "home_assistant_intents": version("home-assistant-intents"), **result})  # fmt: skip
    print(f"saved {path}")


if __name__ == "__main__":
    main()
