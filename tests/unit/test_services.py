"""Service definitions, ID-card numbers and the order state machine (cloud_bridge/services.py),
and the box's definition cache and order book (gateway/services/commerce.py) on real files."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud_bridge.services import (
    TRANSITIONS,
    DefinitionError,
    GovService,
    OrderState,
    OrderStatus,
    Shop,
    Withdrawal,
    can_advance,
    can_step,
    id_card_valid,
    parse_definition,
)
from gateway.services.commerce import SERVICES_FILE, Catalog, OperatorServices

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=30,
)
idents = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,15}", fullmatch=True)
titles = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=1,
                 max_size=20)  # fmt: skip


@st.composite
def shops(draw: st.DrawFn) -> dict[str, Any]:
    cats = draw(st.lists(idents, min_size=1, max_size=4, unique=True))
    item_ids = draw(st.lists(idents, min_size=1, max_size=6, unique=True))
    return {
        "service_id": draw(idents),
        "version": draw(st.integers(1, 2**53)),
        "kind": "shop",
        "title": draw(titles),
        "title_en": draw(st.none() | titles),
        "categories": [{"id": c, "title": draw(titles)} for c in cats],
        "items": [
            {
                "id": i,
                "category": draw(st.sampled_from(cats)),
                "title": draw(titles),
                "price_fen": draw(st.integers(0, 10**9)),
                "stock": draw(st.integers(0, 10**6)),
            }
            for i in item_ids
        ],
        "delivery_areas": draw(st.lists(st.sampled_from(["21", "2101", "210102", "22"]), max_size=3)),
    }


def id_number(body17: str) -> str:
    total = sum(int(d) * w for d, w in zip(body17, _WEIGHTS, strict=True))
    return body17 + "10X98765432"[total % 11]


# -- definitions ----------------------------------------------------------------------------------


@given(json_values)
@settings(max_examples=300)
def test_arbitrary_json_never_crashes_the_parser(value: Any) -> None:
    try:
        parse_definition(value)
    except DefinitionError as exc:
        reasons = exc.reasons
    else:
        reasons = ["parsed"]
    assert reasons


@given(
    shops(), st.dictionaries(st.sampled_from(["kind", "version", "items", "withdrawn", "title"]), json_values)
)
@settings(max_examples=200)
def test_damaged_shops_are_refused_with_reasons_never_crash(
    shop: dict[str, Any], damage: dict[str, Any]
) -> None:
    try:
        parse_definition({**shop, **damage})
    except DefinitionError as exc:
        reasons = exc.reasons
    else:
        reasons = ["parsed"]
    assert reasons and all(isinstance(r, str) and r for r in reasons)


@given(shops())
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_valid_shops_round_trip(data: dict[str, Any]) -> None:
    shop = parse_definition(data)
    assert isinstance(shop, Shop)
    again = parse_definition(json.loads(json.dumps(shop.model_dump(mode="json"))))
    assert again == shop


def test_shop_references_images_and_delivery_areas() -> None:
    base: dict[str, Any] = {
        "service_id": "s", "version": 1, "kind": "shop", "title": "店",
        "categories": [{"id": "c", "title": "类"}],
        "items": [{"id": "i", "category": "c", "title": "物", "price_fen": 100, "stock": 1}],
        "delivery_areas": ["2101"],
    }  # fmt: skip
    shop = parse_definition(base)
    assert isinstance(shop, Shop)
    assert shop.delivers_to("210102") and not shop.delivers_to("210202") and not shop.delivers_to("21")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"items": [{**base["items"][0], "category": "x"}]}, "unknown category"),
        ({"items": [base["items"][0], base["items"][0]]}, "unique"),
        ({"items": [{**base["items"][0], "price_fen": 1.5}]}, "price_fen"),
        ({"items": [{**base["items"][0], "image": "https://x/y.png"}]}, "data: URI"),
        ({"items": [{**base["items"][0], "image": "data:image/png;base64," + "A" * 30_000}]}, "limit"),
        ({"delivery_areas": ["999"]}, "delivery_areas"),
        ({"version": 0}, "version"),
    ]
    for broken, words in cases:
        with pytest.raises(DefinitionError) as info:
            parse_definition({**base, **broken})
        assert words in " ".join(info.value.reasons), info.value.reasons
    gone = parse_definition({"service_id": "s", "version": 2, "withdrawn": True})
    assert isinstance(gone, Withdrawal)


def test_government_service_forms_check_fields_without_echoing_them() -> None:
    gov = parse_definition({
        "service_id": "g", "version": 1, "kind": "gov", "title": "政务",
        "queries": [{"id": "q", "title": "查询", "fields": [
            {"name": "id_number", "label": "身份证号", "type": "id_card"},
            {"name": "account", "label": "户号", "type": "digits", "min_length": 6, "max_length": 10}]}],
    })  # fmt: skip
    assert isinstance(gov, GovService)
    query = gov.query("q")
    assert query is not None
    id_field, account = query.fields
    assert id_field.check("11010519491231002X") is None
    assert id_field.check("11010519491231002x") is None
    reason = id_field.check("110105194912310021")
    assert reason is not None and "1101" not in reason
    assert account.check("123456") is None and account.check("12345") and account.check("12345a")
    with pytest.raises(DefinitionError):
        parse_definition({"service_id": "g", "version": 1, "kind": "gov", "title": "空"})


@given(st.from_regex(r"[1-6][0-9]{5}(19[5-9][0-9]|20[01][0-9])(0[1-9]|1[0-2])(0[1-9]|1[0-9]|2[0-8])[0-9]{3}",
                     fullmatch=True))  # fmt: skip
def test_id_numbers_with_a_correct_check_character_pass_and_any_other_fails(body: str) -> None:
    good = id_number(body)
    assert id_card_valid(good)
    for other in "0123456789X":
        if other != good[17]:
            assert not id_card_valid(body + other)


@given(st.text(max_size=20))
def test_id_number_check_never_raises(text: str) -> None:
    id_card_valid(text)


# -- the order state machine ------------------------------------------------------------------------

states = st.sampled_from(list(OrderState))


@given(states, states)
def test_advance_is_reachability_along_legal_steps(a: OrderState, b: OrderState) -> None:
    def reachable(src: OrderState) -> set[OrderState]:
        out: set[OrderState] = set()
        todo = [src]
        while todo:
            for nxt in TRANSITIONS[todo.pop()]:
                if nxt not in out:
                    out.add(nxt)
                    todo.append(nxt)
        return out

    assert can_advance(a, b) == (b in reachable(a))
    if can_step(a, b):
        assert can_advance(a, b)
    assert not can_advance(a, a)  # no cycles: an order never comes back to a state


@given(st.lists(states, max_size=30))
def test_applying_any_sequence_of_statuses_only_ever_moves_forward(updates: list[OrderState]) -> None:
    current = OrderState.PENDING
    history = [current]
    for new in updates:
        if can_advance(current, new):
            current = new
            history.append(current)
    for before, after in itertools.pairwise(history):
        assert can_advance(before, after)
    terminal = {s for s, nxt in TRANSITIONS.items() if not nxt}
    assert all(s not in terminal for s in history[:-1])  # nothing leaves a terminal state


def test_known_illegal_transitions() -> None:
    S = OrderState
    illegal = [
        (S.PAID, S.CONFIRMED), (S.DELIVERED, S.CANCELLED), (S.PRICE_CHANGED, S.CONFIRMED),
        (S.REJECTED, S.PAID), (S.CANCELLED, S.PAID), (S.SHIPPED, S.PAID), (S.PENDING, S.PENDING),
    ]  # fmt: skip
    for a, b in illegal:
        assert not can_step(a, b) and not can_advance(a, b)
    assert not can_step(S.PENDING, S.PAID) and can_advance(S.PENDING, S.PAID)


# -- the box's cache and order book, on real files ------------------------------------------------------


def _shop(version: int, price: int = 6990) -> dict[str, Any]:
    return {
        "service_id": "shop.a", "version": version, "kind": "shop", "title": "店",
        "categories": [{"id": "c", "title": "类"}],
        "items": [{"id": "milk", "category": "c", "title": "奶", "price_fen": price, "stock": 5}],
        "delivery_areas": ["2101"],
    }  # fmt: skip


async def test_catalog_versions_withdrawal_and_restore(tmp_path: Path) -> None:
    path = tmp_path / SERVICES_FILE
    cat = Catalog(path, region="210102")
    assert await cat.accept(_shop(2)) == "added"
    assert await cat.accept(_shop(1, price=1)) == "ignored"
    assert await cat.accept(_shop(2, price=1)) == "ignored"
    assert await cat.accept(_shop(3, price=7490)) == "replaced"
    assert await cat.accept({"service_id": "shop.a", "version": "x"}) == "invalid" and cat.rejected == 1
    shop = cat.get("shop.a")
    assert isinstance(shop, Shop) and shop.items[0].price_fen == 7490

    restored = Catalog(path, region="210102")
    restored.load()
    assert restored.get("shop.a") == shop
    assert Catalog(path, region="210202").get("shop.a") is None  # no delivery there
    elsewhere = Catalog(path, region="210202")
    elsewhere.load()
    assert elsewhere.visible() == []

    assert await cat.accept({"service_id": "shop.a", "version": 4, "withdrawn": True}) == "withdrawn"
    assert await cat.accept(_shop(3)) == "ignored"  # a late copy cannot bring it back
    again = Catalog(path, region="210102")
    again.load()
    assert again.get("shop.a") is None and again.visible() == []
    assert not list(tmp_path.glob("*.tmp"))


async def test_order_book_applies_only_forward_statuses(tmp_path: Path) -> None:
    sent: list[tuple[str, dict[str, Any]]] = []

    async def send(message_type: str, payload: Any) -> None:
        sent.append((message_type, dict(payload)))

    async with OperatorServices(tmp_path, region="210102") as services:
        services._send = send  # the outbox's part, as `link()` sets it
        await services.catalog.accept(_shop(1))
        from gateway.services.commerce import LineIn, OrderIn

        view = await services.place(
            OrderIn(service_id="shop.a", lines=[LineIn(item_id="milk", quantity=2)]), "t"
        )
        assert view.state == OrderState.PENDING and view.total_fen == 2 * 6990
        assert sent[-1][0] == "order" and sent[-1][1]["key"] == view.key
        key = view.key
        assert await services.apply_status(OrderStatus(key=key, state=OrderState.PAID, order_id="SO1"))
        for back in (OrderState.CONFIRMED, OrderState.PENDING, OrderState.PRICE_CHANGED):
            assert not await services.apply_status(OrderStatus(key=key, state=back))
        assert (await services.order(key)).state == OrderState.PAID  # type: ignore[union-attr]
        assert await services.apply_status(OrderStatus(key=key, state=OrderState.DELIVERED))
        assert not await services.apply_status(OrderStatus(key=key, state=OrderState.CANCELLED))
        assert services.ignored_statuses == 4

        # A pending order survives a restart and is sent again with the same key.
        second = await services.place(
            OrderIn(service_id="shop.a", lines=[LineIn(item_id="milk", quantity=1)]), "t"
        )
    sent.clear()
    async with OperatorServices(tmp_path, region="210102") as services:
        services._send = send
        await services.resume()
    assert [(t, p.get("key")) for t, p in sent if t == "order"] == [("order", second.key)]
