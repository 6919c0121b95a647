"""The TV menu: a 10-foot UI for the TV's browser, driven by the remote control's keys.

Served by the gateway at `/` (Contract 4); the page and its assets live in `static/` (plain
HTML/CSS/JS, no build step, no CDN). `tvmenu_router()` adds the page and the JSON and live
events it reads; pairing (`gateway.services.pairing`) brings the household tokens it writes with.
"""

from __future__ import annotations

from gateway.services.tvmenu.api import (
    ALERT_CLEARED_EVENT,
    ALERT_EVENT,
    STATIC_DIR,
    AlertsView,
    AlertView,
    HomeView,
    NoAlerts,
    NoServices,
    ServicesView,
    SettingsView,
    tvmenu_router,
)

__all__ = [
    "ALERT_CLEARED_EVENT",
    "ALERT_EVENT",
    "STATIC_DIR",
    "AlertView",
    "AlertsView",
    "HomeView",
    "NoAlerts",
    "NoServices",
    "ServicesView",
    "SettingsView",
    "tvmenu_router",
]
