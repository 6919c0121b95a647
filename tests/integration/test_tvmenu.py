"""The TV menu in a real browser (Debian's Chromium driven by Playwright), against a real
gateway and the simulated household, keyboard only: what a person does with the remote.

Every flow asserts on the page and on the simulators' own state. The screenshots of the main
screens go to docs/screenshots/ (tvmenu-<screen>-<w>x<h>.png) when UPDATE_SCREENSHOTS=1.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from firmware_sim.coap import CoapDevice
from firmware_sim.household import Simulator, household_simulators
from firmware_sim.terminal import TvSimulator
from gateway.broker import PrivateBroker
from gateway.config import load_settings
from gateway.daemon import Gateway
from gateway.hub import Hub
from gateway.services.pairing import TOKENS_FILE, Pairing, pairing_router
from gateway.services.tvmenu import ALERT_CLEARED_EVENT, ALERT_EVENT, tvmenu_router
from gateway.web import WebContext, bind, create_app, serve
from tests.helpers import INSTALLER_APPROVED, SCREENSHOTS, Topics, Watcher

pytestmark = pytest.mark.netns

GW = "tvmenu1"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SIZES = [(1280, 720), (1920, 1080)]

LIVING_TV = "bfy-tv-5c0a1b2c3d4e"
BEDROOM_LIGHT = "coap-bfy-lgt-000001"
LIVING_BULB = "zigbee-000b57fffe8c4d21"
#: Every approved device of the simulated household (the cast twins of the TVs wait as pending).
HOUSEHOLD = 16

#: Script errors seen on each open page (a screen check fails on any).
PAGE_ERRORS: weakref.WeakKeyDictionary[Page, list[str]] = weakref.WeakKeyDictionary()

expect.set_options(timeout=10_000)


class StaticAlerts:
    """An in-memory AlertsView: alerts put in by the test, acknowledgements recorded."""

    def __init__(self) -> None:
        self.alerts: dict[str, dict[str, Any]] = {}
        self.acks: list[tuple[str, str]] = []
        self.acked = asyncio.Event()

    def put(self, alert: dict[str, Any]) -> None:
        self.alerts[alert["id"]] = alert

    def active(self) -> list[dict[str, Any]]:
        return [a for a in self.alerts.values() if a["state"] == "active"]

    def history(self, limit: int) -> list[dict[str, Any]]:
        return [a for a in reversed(self.alerts.values()) if a["state"] != "active"][:limit]

    async def acknowledge(self, alert_id: str, source: str) -> bool:
        alert = self.alerts.get(alert_id)
        if alert is None or alert["state"] != "active":
            return False
        alert.update(acknowledged=True, state="acknowledged")
        self.acks.append((alert_id, source))
        self.acked.set()
        return True


@dataclass
class StaticServices:
    items: list[dict[str, Any]] = field(default_factory=list)

    def list(self) -> list[dict[str, Any]]:
        return list(self.items)


def make_alert(
    alert_id: str,
    *,
    level: int = 1,
    state: str = "active",
    sent: str = "2024-11-26T06:05:00Z",
    headline: str = "辽宁省应急管理厅发布森林火险红色预警",
    headline_en: str = "Red forest fire danger warning for Liaoning",
) -> dict[str, Any]:
    description = "受持续干燥天气影响，全省森林火险气象等级达到五级，极易发生森林火灾。"
    instruction = "严禁一切野外用火；进山人员请勿携带火种，发现火情立即拨打 12119。"
    return {
        "id": alert_id, "level": level, "status": "Actual", "drill": False,
        "headline": headline, "description": description, "instruction": instruction,
        "event": "森林火险", "sender_name": "辽宁省应急管理厅", "sent": sent,
        "expires": "2024-11-27T06:05:00Z", "language": "zh-CN",
        "infos": [
            {"language": "zh-CN", "headline": headline, "description": description,
             "instruction": instruction, "event": "森林火险"},
            {"language": "en-US", "headline": headline_en,
             "description": "Dry weather has raised the forest fire danger to the highest grade.",
             "instruction": "No open fires outdoors. Report any fire on 12119.", "event": "Forest fire"},
        ],
        "acknowledged": state == "acknowledged", "state": state,
    }  # fmt: skip


@dataclass
class Home:
    url: str
    gateway: Gateway
    hub: Hub
    pairing: Pairing
    alerts: StaticAlerts
    services: StaticServices
    sims: dict[str, Simulator]
    topics: Topics
    state_dir: Path

    def sim(self, name: str) -> Any:
        return self.sims[name].sim  # type: ignore[attr-defined]

    async def until(self, predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
        """Wait on the gateway's bus (no sleeping) until `predicate` holds."""
        async with self.hub.bus.subscribe() as events:
            try:
                async with asyncio.timeout(timeout):
                    while not predicate():
                        await events.get()
            except TimeoutError:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}") from None

    def state(self, device_id: str) -> dict[str, Any]:
        dev = self.hub.get(device_id)
        return dev.state if dev else {}


@pytest.fixture
async def home(broker: PrivateBroker, tmp_path: Path) -> AsyncIterator[Home]:
    state_dir = tmp_path / "state"
    settings = load_settings(
        overrides={
            "id": GW,
            "state_dir": str(state_dir),
            "mqtt.url": broker.url,
            "http.listen": "127.0.0.1:0",
            "discovery.interfaces": ["lo"],
            "discovery.auto_approve": INSTALLER_APPROVED,
            "discovery.coap": True,
            "discovery.terminal_event_timeout_s": 20.0,  # the TVs send a keep-alive every 15 s
            "registry.flush_interval_s": 0.5,
        },
        environ={},
    )
    gateway = Gateway(settings)
    sims = {s.name: s for s in household_simulators(seed=7, tele_period_s=1, lan=True)}
    alerts = StaticAlerts()
    services = StaticServices()
    sock = bind("127.0.0.1", 0)
    try:
        async with Watcher(broker, "zigbee2mqtt/#") as topics, asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(s.run(broker.url), name=f"sim-{s.name}") for s in sims.values()]
            run = tg.create_task(gateway.run(), name="gateway")
            async with asyncio.timeout(10):
                await gateway.ready.wait()
            assert gateway.hub is not None
            hub = gateway.hub
            pairing = Pairing(state_dir)
            ctx = WebContext(
                hub, gateway_id=GW, admin_token=secrets.token_urlsafe(32), household=pairing.name_of
            )
            app = create_app(
                ctx,
                routers=(
                    tvmenu_router(ctx, alerts, services=services, region="210102", household="LN-0042"),
                    pairing_router(pairing),
                ),
            )
            ready = asyncio.Event()
            web = tg.create_task(serve(app, sock, ready=ready), name="tvmenu-http")
            async with asyncio.timeout(5):
                await ready.wait()
            h = Home(
                url=f"http://127.0.0.1:{sock.getsockname()[1]}/",
                gateway=gateway, hub=hub, pairing=pairing, alerts=alerts, services=services,
                sims=sims, topics=topics, state_dir=state_dir,
            )  # fmt: skip

            def all_up() -> bool:
                devices = hub.devices(approved=True)
                return len(devices) >= HOUSEHOLD and all(d.online and d.state for d in devices)

            await h.until(all_up, "every household device approved and online", timeout=30)
            yield h
            web.cancel()
            gateway.stop()
            await run
            for task in tasks:
                task.cancel()
    finally:
        sock.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


async def open_menu(browser: Browser, home: Home, size: tuple[int, int] = SIZES[0], token: str = "") -> Page:
    context = await browser.new_context(
        viewport={"width": size[0], "height": size[1]}, locale="zh-CN", timezone_id="Asia/Shanghai"
    )
    if token:
        await context.add_init_script(f"localStorage.setItem('bfy.token', {json.dumps(token)})")
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    PAGE_ERRORS[page] = errors
    await page.goto(home.url)
    await expect(page.locator("#screen .room").first).to_be_visible()
    await expect(page.locator(".is-focused")).to_have_count(1)
    return page


async def paired_token(home: Home, name: str = "测试电视菜单") -> str:
    return await home.pairing.pair(home.pairing.pin_info().pin, name, client="test")


async def press(page: Page, *keys: str) -> None:
    for key in keys:
        await page.keyboard.press(key)


async def focus_on(page: Page, text: str, key: str = "ArrowDown", limit: int = 12) -> None:
    """Press `key` until the focused element shows `text`."""
    focused = page.locator(".is-focused")
    for _ in range(limit):
        if text in await focused.inner_text():
            return
        await page.keyboard.press(key)
    await expect(focused).to_contain_text(text)


async def check_tv_screen(page: Page) -> None:
    """What every screen must be: one focus ring, nothing wider than the screen, large type."""
    await expect(page.locator(".is-focused")).to_have_count(1)
    fits = await page.evaluate(
        "() => document.documentElement.scrollWidth <= window.innerWidth"
        " && document.body.scrollWidth <= window.innerWidth"
    )
    assert fits, "the page scrolls horizontally"
    body_px = await page.evaluate("() => parseFloat(getComputedStyle(document.body).fontSize)")
    width = await page.evaluate("() => window.innerWidth")
    assert body_px >= 28 * width / 1280 - 0.5, f"body text is {body_px}px at {width}px wide"
    assert not PAGE_ERRORS[page], PAGE_ERRORS[page]


# -- flows ---------------------------------------------------------------------------------


async def test_home_shows_rooms_and_live_values_and_pairs_to_switch_the_bedroom_light(
    home: Home, browser: Browser
) -> None:
    page = await open_menu(browser, home)
    rooms = page.locator("#screen .room .rname")
    await expect(rooms).to_have_text(["客厅", "卧室", "厨房", "走廊", "玄关"])
    await expect(page.locator(".is-focused")).to_contain_text("客厅")
    await check_tv_screen(page)

    # The PIN, as a person reads it off the settings screen: ↑ to the tabs, → to 设置.
    await press(page, "ArrowUp", "ArrowRight", "ArrowRight", "ArrowRight")
    await expect(page.locator("#tabs .is-focused")).to_have_text("设置")
    pin = home.pairing.pin_info().pin
    await expect(page.locator("#pin")).to_have_text(f"{pin[:3]} {pin[3:]}")
    await press(page, "Escape")  # Back: to Home
    await expect(page.locator("#tabs .tab.active")).to_have_text("首页")

    # Number key 2: the second room. Its devices with live values.
    await press(page, "2")
    await expect(page.locator(".is-focused")).to_contain_text("卧室")
    await expect(page.locator("#room-title")).to_have_text("卧室 · 5 个设备")
    climate = page.locator(".device", has_text="卧室温湿度").locator(".summary")
    await expect(climate).to_have_text(re.compile(r"^\d+(\.\d)? °C · \d+%$"))

    await press(page, "ArrowRight")
    await focus_on(page, "卧室灯")
    await press(page, "Enter")
    await expect(page.locator("#device-title")).to_have_text("卧室 · 卧室灯")
    await expect(page.locator(".is-focused")).to_contain_text("电源")
    assert home.sim("卧室灯").state["on"] is False

    # Not paired yet: the command is refused and the pairing dialog asks for the PIN.
    await press(page, "Enter")
    await expect(page.locator("#dialog")).to_be_visible()
    await expect(page.locator("#pair-title")).to_have_text("请输入配对码")
    await expect(page.locator(".is-focused")).to_have_count(1)
    await press(page, "9" if pin[0] != "9" else "8", *"00000")  # a wrong PIN first
    await expect(page.locator("#pair-error")).to_have_text("配对码不正确，请重新输入")
    pin = home.pairing.pin_info().pin
    await press(page, *pin)
    await expect(page.locator("#dialog")).to_be_hidden()

    # The command went through after pairing: the light itself is on.
    await home.until(lambda: home.state(BEDROOM_LIGHT).get("on") is True, "the bedroom light on")
    light: CoapDevice = home.sim("卧室灯")
    assert light.state["on"] is True
    await expect(page.locator('[data-key="ctl:on"] .ctl-value')).to_have_text("开")

    # Brightness: ↓ to the row, ← twice: 100 → 80 %.
    await press(page, "ArrowDown")
    await expect(page.locator(".is-focused")).to_contain_text("亮度")
    await press(page, "ArrowLeft", "ArrowLeft")
    await home.until(lambda: home.state(BEDROOM_LIGHT).get("brightness") == 80, "brightness 80")
    assert light.state["brightness"] == 80

    # Back: Home, the room's list shows the new values live; Back again: the room; once more: nothing.
    await press(page, "Backspace")
    await expect(page.locator(".device", has_text="卧室灯").locator(".summary")).to_have_text("开 · 亮度 80%")
    await expect(page.locator(".is-focused")).to_contain_text("卧室灯")
    await press(page, "Escape")
    await expect(page.locator(".is-focused")).to_contain_text("卧室")
    await press(page, "Escape")
    await expect(page.locator(".is-focused")).to_contain_text("卧室")
    await expect(page.locator("#tabs .tab.active")).to_have_text("首页")

    # The token is kept by the page and stored only hashed on the gateway.
    token = await page.evaluate("() => localStorage.getItem('bfy.token')")
    assert token and home.pairing.check(token)
    stored = (home.state_dir / TOKENS_FILE).read_text()
    assert token not in stored
    await check_tv_screen(page)


async def test_zigbee_bulb_tv_volume_channel_and_offline_error_from_the_remote(
    home: Home, browser: Browser
) -> None:
    page = await open_menu(browser, home, token=await paired_token(home))

    def bridge_bulb() -> dict[str, Any]:
        raw = home.topics.retained.get("zigbee2mqtt/客厅灯")
        return json.loads(raw) if raw else {}

    # The Zigbee bulb: on, then a warmer-to-cooler step within its own colour range.
    await press(page, "1", "ArrowRight")
    await focus_on(page, "客厅灯")
    await press(page, "Enter")
    await expect(page.locator(".ctl .ctl-label")).to_have_text(["电源", "亮度", "色温"])
    assert bridge_bulb()["state"] == "OFF"
    await press(page, "Enter")
    await home.topics.wait(lambda: bridge_bulb().get("state") == "ON", what="the bulb says ON")
    await press(page, "ArrowDown", "ArrowDown", "ArrowRight")  # 2703 K → 3000 K
    await home.topics.wait(lambda: bridge_bulb().get("color_temp") == 333, what="the bulb at 333 mired")
    # 3000 K until the bulb reports back what it made of it (333 mired is 3003 K).
    await expect(page.locator(".is-focused .ctl-value")).to_have_text(re.compile(r"^300[03] K$"))
    await press(page, "Escape")
    await expect(page.locator(".device", has_text="客厅灯").locator(".summary")).to_have_text(
        "开 · 亮度 100%"
    )

    tv: TvSimulator = home.sim("客厅电视")
    await focus_on(page, "客厅电视", key="ArrowUp")
    await press(page, "Enter")
    await expect(page.locator("#device-title")).to_have_text("客厅 · 客厅电视")
    labels = page.locator(".ctl .ctl-label")
    await expect(labels).to_have_text(["电源", "音量", "静音", "频道", "信号源", "播放"])

    # Volume: ↓ to it, → three times: 25 → 40 (steps of 5).
    await press(page, "ArrowDown")
    await expect(page.locator(".is-focused .ctl-label")).to_have_text("音量")
    await press(page, "ArrowRight", "ArrowRight", "ArrowRight")
    await home.until(lambda: home.state(LIVING_TV).get("volume") == 40, "TV volume 40")
    async with httpx.AsyncClient(timeout=5) as client:
        assert (await client.get(f"{tv.base_url}/state")).json()["volume"] == 40
    await expect(page.locator(".is-focused .ctl-value")).to_have_text("40")

    # Channel: digits, then OK.
    await press(page, "1", "2")
    await expect(page.locator("#channel-entry")).to_have_text("12")
    await expect(page.locator(".is-focused .ctl-label")).to_have_text("频道")
    await press(page, "Enter")
    await home.until(lambda: home.state(LIVING_TV).get("channel") == 12, "TV channel 12")
    async with httpx.AsyncClient(timeout=5) as client:
        assert (await client.get(f"{tv.base_url}/state")).json()["channel"] == 12

    # The TV goes away: the gateway's answer is shown in words.
    tv.crash()
    await home.until(lambda: not home.hub.get(LIVING_TV).online, "TV offline")  # type: ignore[union-attr]
    await expect(page.locator(".dev-head .pill")).to_have_text("离线")
    await press(page, "ArrowUp", "ArrowUp", "ArrowUp")
    await expect(page.locator(".is-focused .ctl-label")).to_have_text("电源")
    await press(page, "Enter")
    await expect(page.locator("#toast")).to_have_text("设备离线")
    await check_tv_screen(page)


async def test_a_new_alert_preempts_the_screen_and_ok_acknowledges_it(home: Home, browser: Browser) -> None:
    home.alerts.put(make_alert("old-1", level=3, state="expired", sent="2024-11-20T02:00:00Z",
                               headline="沈阳市气象台发布大风黄色预警"))  # fmt: skip
    page = await open_menu(browser, home, token=await paired_token(home, "客厅电视菜单"))
    # Somewhere deep in the menu: a device screen.
    await press(page, "1", "ArrowRight", "Enter")
    await expect(page.locator("#device-title")).to_contain_text("客厅 · ")
    title = await page.locator("#device-title").inner_text()

    alert = make_alert("fire-1")
    home.alerts.put(alert)
    home.hub.emit_event(ALERT_EVENT, alert)
    await expect(page.locator("#alert-headline")).to_have_text("辽宁省应急管理厅发布森林火险红色预警")
    await expect(page.locator("#alert-level")).to_have_text("红色预警 · 特别重大")
    await expect(page.locator("#alert-card")).to_have_attribute("data-level", "1")
    await expect(page.locator(".is-focused")).to_have_text("确定")
    await expect(page.locator("#alert-history .hist")).to_have_count(1)
    await expect(page.locator(".alert-band")).to_have_css("background-color", "rgb(198, 40, 40)")  # red
    await check_tv_screen(page)

    await press(page, "Enter")
    async with asyncio.timeout(10):
        await home.alerts.acked.wait()
    assert home.alerts.acks == [("fire-1", "tvmenu:客厅电视菜单")]
    # Back where the person was, and the alert is in the history as acknowledged.
    await expect(page.locator("#device-title")).to_have_text(title)
    await press(page, "ArrowUp")
    await press(page, "ArrowRight")
    await expect(page.locator("#alert-history .hist").first).to_contain_text("已确认")

    # Another alert takes over Home; when it is cleared, the menu goes back to Home.
    await press(page, "ArrowLeft")
    await expect(page.locator("#tabs .tab.active")).to_have_text("首页")
    second = make_alert("quake-2", level=2, headline="地震预警：本溪市发生4.5级地震")
    home.alerts.put(second)
    home.hub.emit_event(ALERT_EVENT, second)
    await expect(page.locator("#alert-headline")).to_have_text("地震预警：本溪市发生4.5级地震")
    await expect(page.locator(".alert-band")).to_have_css("background-color", "rgb(245, 124, 0)")  # orange
    await expect(page.locator("#tabs .badge")).to_have_text("1")
    second["state"] = "cancelled"
    home.hub.emit_event(ALERT_CLEARED_EVENT, {"id": "quake-2"})
    await expect(page.locator("#tabs .tab.active")).to_have_text("首页")
    await expect(page.locator("#tabs .badge")).to_have_count(0)
    await press(page, "ArrowUp", "ArrowRight")
    await expect(page.locator("#no-alerts")).to_contain_text("当前没有预警")
    await expect(page.locator("#alert-history .hist").first).to_contain_text("已解除")
    await check_tv_screen(page)


async def test_settings_switch_to_english_and_services(home: Home, browser: Browser) -> None:
    page = await open_menu(browser, home)
    await press(page, "ArrowUp", "ArrowRight", "ArrowRight")
    await expect(page.locator("#tabs .tab.active")).to_have_text("服务")
    await expect(page.locator("#services-empty")).to_contain_text("暂无服务")
    await press(page, "ArrowRight", "ArrowDown")
    await expect(page.locator("#gateway-id")).to_have_text(GW)
    await expect(page.locator(".is-focused")).to_contain_text("中文")
    await press(page, "ArrowRight", "Enter")
    await expect(page.locator("#tabs .tab")).to_have_text(["Home", "Alerts", "Services", "Settings"])
    await expect(page.locator("html")).to_have_attribute("lang", "en")
    await expect(page.locator(".is-focused")).to_contain_text("English")

    # The choice survives a reload; services the feature offers are listed by title.
    home.services.items = [
        {"service_id": "shop", "title": "电视购物", "title_en": "TV shopping", "kind": "commerce"},
        {"service_id": "gov", "title": "政务服务", "kind": "government"},
    ]
    await page.reload()
    await expect(page.locator("#tabs .tab.active")).to_have_text("Home")
    await press(page, "ArrowUp", "ArrowRight", "ArrowRight", "ArrowDown")
    await expect(page.locator(".svc .title")).to_have_text(["TV shopping", "政务服务"])
    await expect(page.locator(".is-focused")).to_contain_text("TV shopping")
    await press(page, "Escape")
    await expect(page.locator("#tabs .tab.active")).to_have_text("Home")
    await press(page, "2", "ArrowRight")
    await focus_on(page, "卧室灯")
    await press(page, "Enter")
    await expect(page.locator("#device-title")).to_have_text("卧室 · 卧室灯")
    await expect(page.locator(".ctl .ctl-label")).to_have_text(["Power", "Brightness"])
    await check_tv_screen(page)


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
async def test_screenshots_of_the_main_screens(home: Home, browser: Browser, size: tuple[int, int]) -> None:
    width, height = size
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = await open_menu(browser, home, size=size, token=await paired_token(home))

    async def shot(screen: str) -> None:
        await check_tv_screen(page)
        await page.screenshot(path=str(SCREENSHOTS / f"tvmenu-{screen}-{width}x{height}.png"))

    await press(page, "ArrowRight")
    await expect(page.locator(".is-focused")).to_contain_text("客厅电视")
    await shot("home")

    await press(page, "Enter", "ArrowDown")
    await expect(page.locator(".is-focused .ctl-label")).to_have_text("音量")
    await shot("device")

    await press(page, "Escape", "ArrowUp", "ArrowRight", "ArrowRight")
    await expect(page.locator("#services-empty")).to_be_visible()
    await shot("services")

    await press(page, "ArrowRight", "ArrowDown")
    await expect(page.locator("#pin")).to_be_visible()
    await shot("settings")

    home.alerts.put(make_alert("wind-0", level=3, state="expired", sent="2024-11-20T02:00:00Z",
                               headline="沈阳市气象台发布大风黄色预警"))  # fmt: skip
    home.alerts.put(make_alert("fog-0", level=4, state="cancelled", sent="2024-11-18T23:10:00Z",
                               headline="大连市气象台发布大雾蓝色预警"))  # fmt: skip
    snow = make_alert(
        "snow-1", level=2, sent="2024-11-26T07:30:00Z",
        headline="沈阳市气象台发布暴雪橙色预警", headline_en="Orange blizzard warning for Shenyang",
    )  # fmt: skip
    snow.update(
        event="暴雪", sender_name="沈阳市气象台",
        description="预计未来12小时内，沈阳市区及辽中、新民将出现暴雪，降雪量可达10毫米以上，局地伴有6级大风。",
        instruction="请减少外出，注意防寒保暖；驾车请减速慢行，注意交通安全。",
    )  # fmt: skip
    snow["infos"][0].update(description=snow["description"], instruction=snow["instruction"], event="暴雪")
    home.alerts.put(snow)
    home.hub.emit_event(ALERT_EVENT, snow)
    await expect(page.locator("#alert-headline")).to_have_text("沈阳市气象台发布暴雪橙色预警")
    await expect(page.locator("#alert-history .hist")).to_have_count(2)
    await shot("alert")


# -- the HTTP side, as any LAN client sees it ------------------------------------------------


async def test_api_home_stream_and_static_caching(home: Home) -> None:
    async with httpx.AsyncClient(base_url=home.url, timeout=10) as client:
        data = (await client.get("/api/v1/home")).json()
        assert data["gateway"] == {"id": GW, "version": data["gateway"]["version"], "region": "210102",
                                   "household": "LN-0042"}  # fmt: skip
        assert [r["name"] for r in data["rooms"]] == ["客厅", "卧室", "厨房", "走廊", "玄关"]
        ids = [d["info"]["id"] for r in data["rooms"] for d in r["devices"]]
        assert len(ids) == HOUSEHOLD and all(not i.startswith("googlecast") for i in ids)

        page = await client.get("/")
        assert page.headers["cache-control"] == "no-cache"
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        again = await client.get("/", headers={"If-None-Match": page.headers["etag"]})
        assert again.status_code == 304
        script = page.text.split('src="')[1].split('"')[0]
        js = await client.get(script)
        assert js.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert (
            js.headers["content-encoding"] == "gzip" and int(js.headers["content-length"]) < len(js.text) / 2
        )
        assert (await client.get("/static/app.js")).headers["cache-control"] == "no-cache"
        assert (await client.get("/static/../pairing.py")).status_code == 404
        assert (await client.get("/static/index.html")).status_code == 404

        settings = (await client.get("/api/v1/settings")).json()
        assert settings["gateway_id"] == GW and settings["network"]
        assert "pin" not in json.dumps(settings)
        schema = (await client.get("/openapi.json")).json()
        assert {"/api/v1/home", "/api/v1/stream", "/api/v1/alerts", "/api/v1/pair"} <= set(schema["paths"])

        # Live events: a device change, an alert, a cleared alert. One bus subscription per client.
        subscribers = home.hub.bus._queues
        before = len(subscribers)
        async with client.stream("GET", "/api/v1/stream") as stream:
            lines = stream.aiter_lines()
            assert (await anext(lines)).startswith("retry:")
            assert len(subscribers) == before + 1
            home.hub.emit_event(ALERT_EVENT, make_alert("sse-1"))
            home.hub.emit_event(ALERT_CLEARED_EVENT, {"id": "sse-1"})
            seen: dict[str, list[Any]] = {}
            event = ""
            async with asyncio.timeout(10):
                async for line in lines:
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        seen.setdefault(event, []).append(json.loads(line[6:]))
                    if "alert_cleared" in seen and "device" in seen:
                        break
        assert seen["alert"][0]["id"] == "sse-1" and seen["alert"][0]["level"] == 1
        assert seen["alert_cleared"] == [{"id": "sse-1"}]
        assert {"info", "state", "online", "approved"} <= set(seen["device"][0])
        # Released once the client has gone (`until` itself holds one subscription meanwhile).
        await home.until(lambda: len(subscribers) == before + 1, "the stream's subscription released")

        # Writes need a token; the answer says nothing more.
        for headers in ({}, {"Authorization": "Bearer nope"}):
            r = await client.post("/api/v1/alerts/sse-1/ack", headers=headers)
            assert (r.status_code, r.json()) == (401, {"detail": "Unauthorized"})
        token = await paired_token(home)
        r = await client.post("/api/v1/alerts/nothing/ack", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 404
