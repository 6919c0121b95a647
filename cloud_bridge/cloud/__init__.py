"""The reference cloud: a lab-grade stand-in for 北方云 that speaks Contract 3.

`cloud serve` runs it (server.py): a development broker with mutual TLS and a generated ACL
(broker.py), the MQTT side that stores uplinks and sends signed acks, commands, service pushes
and key rotations (service.py), the operator HTTP API with provisioning (api.py), and the
database on SQLite or PostgreSQL (db.py, models.py, migrations/).

The data-directory conventions shared by `cloud serve` and the `cloud` client commands live
here; everything else is imported on first use, so the client commands start without loading
the server (FastAPI, tortoise).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cloud_bridge.cloud.api import Tokens, create_app
    from cloud_bridge.cloud.broker import CLOUD_CLIENT_CN, CloudBroker, CloudBrokerError, render_acl
    from cloud_bridge.cloud.db import CloudDB, CloudDBError
    from cloud_bridge.cloud.server import Cloud, CloudSettings, CloudStartError
    from cloud_bridge.cloud.service import CloudService, CloudUnavailable, KeyRing, KeyRingError

__all__ = [
    "CLOUD_CLIENT_CN",
    "CLOUD_JSON",
    "DEFAULT_HTTP",
    "DEFAULT_PUBLIC_HOST",
    "ROLES",
    "Cloud",
    "CloudBroker",
    "CloudBrokerError",
    "CloudDB",
    "CloudDBError",
    "CloudService",
    "CloudSettings",
    "CloudStartError",
    "CloudUnavailable",
    "KeyRing",
    "KeyRingError",
    "Tokens",
    "create_app",
    "default_data_dir",
    "render_acl",
]

#: In the data directory: {api_url, mqtt_url, pid} of the running cloud, for the CLI.
CLOUD_JSON = "cloud.json"
#: API roles; each has `tokens/<role>.token` in the data directory.
ROLES = ("operator", "installer")
DEFAULT_HTTP = "127.0.0.1:8000"
DEFAULT_PUBLIC_HOST = "127.0.0.1"


def default_data_dir(environ: Mapping[str, str]) -> Path:
    """`$CLOUD_DATA_DIR`, else /var/lib/beifang-cloud for root, ~/.local/state/beifang-cloud."""
    if environ.get("CLOUD_DATA_DIR"):
        return Path(environ["CLOUD_DATA_DIR"])
    if os.geteuid() == 0:
        return Path("/var/lib/beifang-cloud")
    return Path.home() / ".local" / "state" / "beifang-cloud"


_LAZY = {
    "Tokens": "api",
    "create_app": "api",
    "CLOUD_CLIENT_CN": "broker",
    "CloudBroker": "broker",
    "CloudBrokerError": "broker",
    "render_acl": "broker",
    "CloudDB": "db",
    "CloudDBError": "db",
    "Cloud": "server",
    "CloudSettings": "server",
    "CloudStartError": "server",
    "CloudService": "service",
    "CloudUnavailable": "service",
    "KeyRing": "service",
    "KeyRingError": "service",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
