"""Voice for the operator's services: 我要买两箱牛奶, 查看我的订单, 查一下社保.

Implements the voice service's `VoiceServices` on top of the pushed definitions and the order
book (gateway.services.commerce). Decisions:
- An item is found by its name in the household's language inside the shops on this box
  ("牛奶" → 辉山纯牛奶 250ml×24). Several candidates: the household is told which, and says again.
- A spoken order is placed like one from the TV (stored first, then sent); nothing is paid by
  voice: the TV shows the payment QR code, and scanning it is the household's confirmation.
  The answer says what the cloud made of it if it answers within a few seconds (confirmed,
  price changed, out of stock), else that the order is kept and will go when the link is back.
- Government look-ups need an ID number, which is never said aloud: the answer points to the
  service on the TV.
"""

from __future__ import annotations

from cloud_bridge.services import GovService, OrderState, Shop
from gateway.services.commerce import LineIn, OperatorServices, OrderIn, OrderView, ServicesUnavailable

__all__ = ["ShoppingByVoice"]

#: How long an answer waits for the cloud to confirm a spoken order.
CONFIRM_WAIT_S = 4.0
_STATE_ZH = {
    "pending": "待提交",
    "confirmed": "待支付",
    "price_changed": "价格有变",
    "rejected": "未成交",
    "paid": "已支付",
    "shipped": "已发货",
    "delivered": "已送达",
    "cancelled": "已取消",
}
_STATE_EN = {
    "pending": "waiting to be sent",
    "confirmed": "waiting for payment",
    "price_changed": "price changed",
    "rejected": "not placed",
    "paid": "paid",
    "shipped": "shipped",
    "delivered": "delivered",
    "cancelled": "cancelled",
}


def _yuan(fen: int) -> str:
    return f"{fen / 100:.2f}"


class ShoppingByVoice:
    def __init__(self, services: OperatorServices, *, confirm_wait_s: float = CONFIRM_WAIT_S) -> None:
        self._services = services
        self._wait_s = confirm_wait_s

    def _find(self, words: str, lang: str) -> list[tuple[Shop, str, str]]:
        """(shop, item id, item name) whose name contains `words`."""
        needle = words.strip().lower()
        found = []
        for definition in self._services.catalog.visible():
            if not isinstance(definition, Shop):
                continue
            for item in definition.items:
                name = item.title if lang == "zh-CN" else (item.title_en or item.title)
                if needle and (needle in name.lower() or needle in item.title.lower()):
                    found.append((definition, item.id, name))
        return found

    async def order(self, item: str, quantity: int, unit: str, lang: str) -> str:
        zh = lang == "zh-CN"
        found = self._find(item, lang)
        if not found:
            return f"抱歉，商城里没有找到“{item}”。" if zh else f"Sorry, the shop has no “{item}”."
        if len(found) > 1:
            names = "、".join(n for _, _, n in found[:4]) if zh else ", ".join(n for _, _, n in found[:4])
            return (
                f"有这几种：{names}。您要哪一种？" if zh else f"There are: {names}. Which one would you like?"
            )
        shop, item_id, name = found[0]
        quantity = max(1, min(quantity, shop.max_quantity))
        name = f"{name} {self._amount(shop, item_id, quantity, zh)}"
        try:
            placed = await self._services.place(
                OrderIn(service_id=shop.service_id, lines=[LineIn(item_id=item_id, quantity=quantity)]),
                "voice",
            )
        except ServicesUnavailable:
            return "购物服务暂不可用。" if zh else "Shopping isn't available right now."
        try:
            view = await self._services.wait_for(
                placed.key, lambda v: v.state != OrderState.PENDING, timeout_s=self._wait_s
            )
        except TimeoutError:
            view = placed
        return self._answer(view, name, zh)

    @staticmethod
    def _amount(shop: Shop | None, item_id: str, quantity: int, zh: bool) -> str:
        """两箱 → "2箱" / "2 boxes" (the item's own unit)."""
        item = shop.item(item_id) if shop is not None else None
        unit = (item.unit if zh else item.unit_en) if item is not None else ""
        return f"{quantity}{unit or '份'}" if zh else f"× {quantity}" + (f" {unit}" if unit else "")

    @staticmethod
    def _answer(view: OrderView, name: str, zh: bool) -> str:
        total = _yuan(view.total_fen)
        if view.state == OrderState.CONFIRMED:
            if zh:
                return f"好的，已下单：{name}，共{total}元。请用手机扫电视上的二维码支付。"
            return f"Done: {name}, {total} yuan. Scan the QR code on the TV to pay."
        if view.state == OrderState.PRICE_CHANGED:
            new = _yuan(view.new_total_fen or view.total_fen)
            if zh:
                return f"{name}的价格变了，现在共{new}元。请在电视上确认后再下单。"
            return f"The price of {name} has changed; it is now {new} yuan. Please confirm on the TV."
        if view.state == OrderState.REJECTED:
            return (
                f"没能下单：{view.reason or '库存不足'}。"
                if zh
                else f"The order was not placed: {view.reason or 'out of stock'}."
            )
        if zh:
            return f"已记下订单：{name}。网络恢复后会自动提交。"
        return f"Your order ({name}) is kept and will be sent when the connection is back."

    async def order_status(self, lang: str) -> str:
        zh = lang == "zh-CN"
        orders = await self._services.orders(limit=3)
        if not orders:
            return "您还没有订单。" if zh else "You have no orders yet."
        parts = []
        for o in orders:
            definition = self._services.catalog.get(o.service_id)
            shop = definition if isinstance(definition, Shop) else None
            names = ("、" if zh else ", ").join(
                f"{(line.title if zh else (line.title_en or line.title))} "
                + self._amount(shop, line.item_id, line.quantity, zh)
                for line in o.lines
            )
            state = (_STATE_ZH if zh else _STATE_EN).get(o.state.value, o.state.value)
            parts.append(f"{names}，{state}" if zh else f"{names}: {state}")
        return (
            ("您最近的订单：" + "；".join(parts) + "。")
            if zh
            else ("Your recent orders: " + "; ".join(parts) + ".")
        )

    async def gov_query(self, service: str, lang: str) -> str:
        zh = lang == "zh-CN"
        gov = [d for d in self._services.catalog.visible() if isinstance(d, GovService)]
        if not gov:
            return "政务服务暂不可用。" if zh else "Government services aren't available right now."
        title = gov[0].title if zh else (gov[0].title_en or gov[0].title)
        if zh:
            return f"查询需要输入身份证号，请在电视的“服务”里打开“{title}”查询。"
        return f"That needs your ID number: open “{title}” under Services on the TV."
