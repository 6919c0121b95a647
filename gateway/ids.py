"""Stable device ids from hardware identity (MAC, IEEE address, serial, TXT id, endpoint name).

An id is `<namespace>-<identity>`, lowercase `[a-z0-9_-]`, at most 64 characters, and the same
for the same hardware on every restart and re-discovery.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["device_id", "normalize_mac"]

_MAC_RE = re.compile(r"^[0-9a-f]{12}$")
_SAFE = re.compile(r"[a-z0-9_-]+")
_UNSAFE = re.compile(r"[^a-z0-9_-]+")
_MAX_LEN = 64


def normalize_mac(mac: str) -> str:
    """`AA:BB:CC:DD:EE:FF`, `aa-bb-..`, `aabb.ccdd.eeff` or `AABBCCDDEEFF` → `aabbccddeeff`.

    Raises ValueError for anything that is not a 48-bit MAC address.
    """
    hexdigits = re.sub(r"[:\-.]", "", mac.strip()).lower()
    if not _MAC_RE.match(hexdigits):
        raise ValueError(f"not a MAC address: {mac!r}")
    return hexdigits


def device_id(namespace: str, identity: str, *, suffix: str = "") -> str:
    """Build a stable id from a namespace (protocol) and a hardware identity.

    Identities that are already safe are used as they are (readable ids such as
    `tasmota-a4cf12345678`); anything else keeps a readable prefix plus a hash of the exact
    identity, so two different identities never fold into one id.
    """
    ns = _UNSAFE.sub("-", namespace.lower()).strip("-") or "dev"
    tail = "-" + (_UNSAFE.sub("-", suffix.lower()).strip("-") or "x") if suffix else ""
    ident = identity.strip().lower()
    room = _MAX_LEN - len(ns) - 1 - len(tail)
    if not (_SAFE.fullmatch(ident) and len(ident) <= room):
        digest = hashlib.sha256(identity.strip().encode("utf-8")).hexdigest()[:16]
        prefix = _UNSAFE.sub("-", ident).strip("-")[: max(0, room - 17)].strip("-")
        ident = f"{prefix}-{digest}" if prefix else digest
    return f"{ns}-{ident}{tail}"
