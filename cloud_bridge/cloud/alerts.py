"""The cloud's alert desk: CAP in, one signed alert per region topic out, receipts and coverage.

An alert is kept until every targeted gateway has receipted it or it has expired: a gateway
that comes back online (its presence says so) and has no receipt for an active alert gets it
again on its own `down` topic. Broker persistence alone is not trusted (a crashed broker
forgets what it queued).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from cloud_bridge.cap import Alert, expires_utc, priority, regions, sent_utc
from cloud_bridge.cloud.db import AlertRow, CloudDB, ReceiptRow
from cloud_bridge.cloud.service import CloudService
from cloud_bridge.protocol import BridgeError, new_envelope, region_prefixes, topics

__all__ = ["AlertDesk", "AlertExpired", "AlertTargetError", "minimal_regions"]

log = logging.getLogger(__name__)

_RESEND_QUEUE = 10_000
#: An alert without `expires` ends this long after it was sent (the gateways' default too).
DEFAULT_LIFETIME = timedelta(hours=6)
#: A receipt of any of these stages means the gateway has the alert.
_HAS_IT = {"received", "displayed", "spoken", "acknowledged", "expired", "updated", "cancelled", "suppressed"}
_PRESENTED = {"displayed", "spoken"}


class AlertTargetError(BridgeError):
    """The alert names no region the cloud can target."""


class AlertExpired(BridgeError):
    """The alert's time is over before it was sent: nothing is stored or published."""


def minimal_regions(codes: Iterable[str]) -> list[str]:
    """Drop codes covered by a shorter one (2101 is inside 21): a gateway subscribed to both
    levels must get the alert once, not twice."""
    unique = sorted(set(codes), key=lambda c: (len(c), c))
    kept: list[str] = []
    for code in unique:
        if not any(code.startswith(k) for k in kept):
            kept.append(code)
    return kept


def _iso(ts: datetime | None) -> str | None:
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z") if ts else None


def _blank(gateway_id: str) -> dict[str, Any]:
    return {
        "id": gateway_id,
        "received": None,
        "result": None,
        "timeline": None,
        "displayed": [],
        "spoken": [],
        "acknowledged": None,
        "ended": None,
        "suppressed": None,
    }


class AlertDesk:
    def __init__(self, db: CloudDB, service: CloudService) -> None:
        self._db = db
        self._service = service
        self._back: asyncio.Queue[str] = asyncio.Queue(_RESEND_QUEUE)
        service.listeners.append(self._on_commit)
        self.resent = 0

    def _on_commit(self, online: set[str], receipts: list[ReceiptRow]) -> None:
        for gateway_id in online:
            if not self._back.full():
                self._back.put_nowait(gateway_id)

    async def submit(
        self, alert: Alert, *, regions_: list[str] | None = None, accepted_at: datetime | None = None
    ) -> AlertRow:
        """Target, sign, publish once per region topic, and keep it (CloudUnavailable if the
        broker does not take it). An alert whose time is over is refused (AlertExpired); one an
        earlier Update or Cancel named is kept as updated/cancelled and never published."""
        accepted = accepted_at or datetime.now(UTC)
        stamps = [t for t in (expires_utc(i) for i in alert.infos) if t is not None]
        expires = min(stamps) if stamps else sent_utc(alert) + DEFAULT_LIFETIME
        if expires <= accepted:
            raise AlertExpired(f"it expired at {_iso(expires)}; nothing was sent (the boxes would refuse it)")
        codes = list(regions_ or []) or regions(alert)
        if not codes and alert.references:
            for ref in alert.references:  # an Update/Cancel goes where its alert went
                earlier = await self._db.alert(ref.alert_id)
                if earlier is not None:
                    codes += earlier.targets
        if not codes:
            raise AlertTargetError("no target region: give ?region=CODE or CAP geocodes (行政区划代码)")
        if "all" in codes:
            targets, topic_list = ["all"], [topics.ALL_ALERT]
        else:
            for code in codes:
                region_prefixes(code)  # ValueError for anything that is not a region code
            targets = minimal_regions(codes)
            topic_list = [topics.region(code, "alert") for code in targets]
        expected = await self._expected(targets)
        payload: dict[str, Any] = {
            "alert": alert.model_dump(mode="json"),
            "alert_id": alert.alert_id,
            "priority": priority(alert),
            "targets": targets,
        }
        now = datetime.now(UTC)
        # A Cancel is never in force itself; an alert already cancelled or updated (its Cancel
        # or Update came first) is kept for the record and not sent.
        state, changed, envelope_id = "active", now, ""
        tombstone = await self._db.alert_tombstone(alert.alert_id)
        if tombstone is not None:
            state, changed = tombstone
        elif alert.msg_type == "Cancel":
            state = "cancelled"
        if tombstone is None:
            signed = await self._service.publish_signed_many(topic_list, new_envelope("alert", payload))
            envelope_id = signed.id
        row = AlertRow(
            id=alert.alert_id,
            envelope_id=envelope_id,
            alert=payload["alert"],
            priority=payload["priority"],
            msg_type=alert.msg_type,
            status=alert.status,
            targets=targets,
            expected=expected,
            created_at=now,
            expires_at=expires,
            accepted_at=accepted,
            state=state,
            state_changed_at=changed,
        )
        await self._db.add_alert(row)
        if alert.msg_type in ("Update", "Cancel") and tombstone is None:
            ended = "cancelled" if alert.msg_type == "Cancel" else "updated"
            named = [r.alert_id for r in alert.references]
            await self._db.add_alert_tombstones(named, ended, by=alert.alert_id, at=now)
            await self._db.set_alert_state(named, ended, at=now)
        log.warning(
            "alert %s (%s, level %d) sent to %s: %d gateways expected",
            alert.alert_id, alert.msg_type, row.priority, ",".join(targets), len(expected),
        )  # fmt: skip
        return row

    async def _expected(self, targets: list[str]) -> list[str]:
        if targets == ["all"]:
            return sorted(g.id for g in await self._db.gateways(limit=1_000_000))
        ids: set[str] = set()
        for code in targets:
            ids.update(g.id for g in await self._db.gateways(region_prefix=code, limit=1_000_000))
        return sorted(ids)

    async def run(self) -> None:
        """Resend active alerts to gateways that come back without having them."""
        while True:
            gateway_id = await self._back.get()
            try:
                await self._resend(gateway_id)
            except BridgeError as exc:
                log.warning("could not resend alerts to %s: %s", gateway_id, exc)

    async def expire_due(self) -> int:
        """Mark alerts whose time is over as expired (before anything lists them)."""
        return await self._db.expire_alerts(datetime.now(UTC))

    async def _resend(self, gateway_id: str) -> None:
        now = datetime.now(UTC)
        for row in await self._db.alerts(active_only=True, limit=1000):
            if row.expires_at <= now or gateway_id not in row.expected or row.msg_type == "Cancel":
                continue
            got = {r.stage for r in await self._db.receipts(row.id) if r.gateway_id == gateway_id}
            if got & _HAS_IT:
                continue
            payload = {
                "alert": row.alert,
                "alert_id": row.id,
                "priority": row.priority,
                "targets": row.targets,
            }
            # A new envelope (new id) with the same alert: the gateway de-duplicates by CAP identity.
            await self._service.publish_signed(topics.down(gateway_id), new_envelope("alert", payload))
            self.resent += 1
            log.info("alert %s resent to %s (back online without it)", row.id, gateway_id)

    async def status(self, alert_id: str) -> dict[str, Any] | None:
        """Per-gateway and per-device results, and coverage."""
        row = await self._db.alert(alert_id)
        if row is None:
            return None
        receipts = await self._db.receipts(alert_id)
        per = {gw: _blank(gw) for gw in row.expected}
        for r in receipts:
            g = per.get(r.gateway_id)
            if g is None:  # a gateway moved into the region after the alert went out
                g = per[r.gateway_id] = {**_blank(r.gateway_id), "unexpected": True}
            if r.stage == "received":
                g["received"] = g["received"] or _iso(r.ts)  # the first one counts
                g["result"] = g["result"] or r.detail.get("result")
                g["timeline"] = g["timeline"] or r.detail.get("timeline")
            elif r.stage in _PRESENTED and r.device:
                entry = {"device": r.device, "ts": _iso(r.ts)}
                if r.detail.get("dispatched"):
                    entry["dispatched"] = r.detail["dispatched"]
                g[r.stage].append(entry)
            elif r.stage == "acknowledged":
                g["acknowledged"] = _iso(r.ts)
            elif r.stage in ("expired", "cancelled", "updated"):
                g["ended"] = {"how": r.stage, "ts": _iso(r.ts)}
            elif r.stage == "suppressed":
                g["suppressed"] = r.detail.get("reason", "")
        expected = len(row.expected)
        received = sum(1 for gw in row.expected if per[gw]["received"])
        presented = {(g["id"], d["device"]) for g in per.values() for stage in _PRESENTED for d in g[stage]}
        known = set(presented)  # a device that presented it is known even before its shadow arrives
        for gw in row.expected:
            for shadow in await self._db.devices(gw):
                info = shadow.info or {}
                if info.get("kind") == "tv" or "say" in (info.get("settable") or []):
                    known.add((gw, shadow.device_id))
        first = (row.alert.get("infos") or [{}])[0]
        return {
            "id": row.id,
            "state": row.state,
            "state_changed_at": _iso(row.state_changed_at),
            "msg_type": row.msg_type,
            "status": row.status,
            "priority": row.priority,
            "headline": first.get("headline") or first.get("event"),
            "targets": row.targets,
            "accepted_at": _iso(row.accepted_at),
            "created_at": _iso(row.created_at),
            "expires_at": _iso(row.expires_at),
            "envelope_id": row.envelope_id,
            "gateways": sorted(per.values(), key=lambda g: g["id"]),
            "coverage": {
                "gateways_expected": expected,
                "gateways_received": received,
                "gateway_share": round(received / expected, 4) if expected else None,
                "devices_known": len(known),
                "devices_presented": len(presented),
                "device_share": round(len(presented) / len(known), 4) if known else None,
            },
        }
