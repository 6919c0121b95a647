"""A broker login per device, on the box's Mosquitto, through its dynamic-security plugin.

Debian's Mosquitto 2.0.11 ships `mosquitto_dynamic_security.so`: clients, roles and ACLs kept in
a JSON file and changed while the broker runs by publishing commands to
`$CONTROL/dynamic-security/v1` (no file rewrite, no reload, no privileges beyond the admin
login). The installer's `gateway logins init` writes that file with one client, the gateway,
allowed everything and the plugin's administration; the broker config sets
`use_username_as_clientid true`, so every connection's client id is its user name and no login
can take over another's session.

From then on `gateway logins add tasmota --mac MAC` (or `zigbee2mqtt`, `homeassistant`) makes a
login whose ACL covers only that device's own topics: a plug may write its discovery config
under its MAC and its `stat`/`tele` topics, and read its `cmnd` topic; nothing else. The
gateway records each login (never its password) in `device_logins.json` in the state directory
and accepts a Tasmota config only from a MAC that has a login, with that login's topic.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import glob
import hashlib
import json
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson

from gateway.devices.guard import topic_level_ok
from gateway.errors import BrokerError, GatewayError
from gateway.ids import normalize_mac
from gateway.mqtt import Message, MqttClient

__all__ = [
    "DYNSEC_TOPIC",
    "LOGINS_FILE",
    "Credentials",
    "DeviceLogins",
    "Login",
    "LoginError",
    "dynsec_config",
    "plugin_path",
    "tasmota_default_topic",
    "write_private",
]

log = logging.getLogger(__name__)

DYNSEC_TOPIC = "$CONTROL/dynamic-security/v1"
LOGINS_FILE = "device_logins.json"
GATEWAY_ROLE = "gateway"
ADMIN_ROLE = "dynsec-admin"
_ITERATIONS = 101  # what mosquitto_ctrl uses
_COMMAND_TIMEOUT_S = 5.0
LoginKind = Literal["tasmota", "zigbee2mqtt", "homeassistant"]


class LoginError(GatewayError):
    """A login could not be made or removed; the message says why."""


@dataclass(frozen=True, slots=True)
class Login:
    """A device login as the gateway records it (never the password)."""

    username: str
    kind: LoginKind
    created: str
    mac: str = ""  # Tasmota: 12 lower-case hex digits
    topic: str = ""  # Tasmota: its %topic%; Zigbee2MQTT: its base topic


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str
    login: Login


def plugin_path() -> str:
    """Where Debian (or a source build) put the dynamic-security plugin."""
    for pattern in ("/usr/lib/*/mosquitto_dynamic_security.so", "/usr/lib/mosquitto_dynamic_security.so"):
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    raise LoginError("mosquitto_dynamic_security.so not found: install Debian's mosquitto package")


def _hashed(password: str) -> dict[str, Any]:
    """The plugin's password record: PBKDF2-HMAC-SHA512, 12-byte salt, base64 (as mosquitto_ctrl)."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _ITERATIONS, 64)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": _ITERATIONS,
    }


def _acl(acltype: str, topic: str, allow: bool = True) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "allow": allow}


def dynsec_config(username: str, password: str) -> dict[str, Any]:
    """A fresh plugin file: the gateway's own login, allowed every topic and the plugin's
    administration; everyone else denied by default."""
    return {
        "clients": [
            {
                "username": username,
                "textName": "Beifang gateway daemon",
                **_hashed(password),
                "roles": [{"rolename": GATEWAY_ROLE}, {"rolename": ADMIN_ROLE}],
            }
        ],
        "roles": [
            {
                "rolename": GATEWAY_ROLE,
                "acls": [
                    _acl("publishClientSend", "#"),
                    _acl("publishClientReceive", "#"),
                    _acl("subscribePattern", "#"),
                    _acl("unsubscribePattern", "#"),
                ],
            },
            {
                "rolename": ADMIN_ROLE,
                "acls": [
                    _acl("publishClientSend", f"{DYNSEC_TOPIC}"),
                    _acl("publishClientReceive", f"{DYNSEC_TOPIC}/#"),
                    _acl("subscribePattern", f"{DYNSEC_TOPIC}/#"),
                ],
            },
        ],
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": True,
            "subscribe": False,
            "unsubscribe": True,
        },
    }


def tasmota_default_topic(mac: str) -> str:
    """Tasmota's factory topic: `tasmota_` and the last six hex digits of the MAC, upper case."""
    return f"tasmota_{normalize_mac(mac)[-6:].upper()}"


def _role_acls(login: Login, *, tasmota_prefix: str, gateway_id: str) -> list[dict[str, Any]]:
    if login.kind == "tasmota":
        mac, topic = login.mac.upper(), login.topic
        return [
            _acl("publishClientSend", f"{tasmota_prefix}/{mac}/#"),
            _acl("publishClientSend", f"stat/{topic}/#"),
            _acl("publishClientSend", f"tele/{topic}/#"),
            _acl("subscribePattern", f"cmnd/{topic}/#"),
            # Tasmota also listens on its group and fallback topics; only the gateway writes there.
            _acl("subscribePattern", "cmnd/tasmotas/#"),
            _acl("subscribePattern", f"cmnd/DVES_{mac[-6:]}_fb/#"),
        ]
    if login.kind == "zigbee2mqtt":
        return [_acl("publishClientSend", f"{login.topic}/#"), _acl("subscribePattern", f"{login.topic}/#")]
    # Home Assistant: reads the contract, sends commands and transcripts, owns its discovery.
    gw = gateway_id or "+"
    return [
        _acl("subscribePattern", "home/#"),
        _acl("publishClientSend", f"home/{gw}/device/+/set"),
        _acl("publishClientSend", f"home/{gw}/voice/in"),
        _acl("subscribePattern", "homeassistant/#"),
        _acl("publishClientSend", "homeassistant/#"),
    ]


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Atomically replace `path`, readable by its owner only."""
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


class DeviceLogins:
    """Device logins through the plugin, over the gateway's own (admin) connection.

    `enabled=False` (a broker without the plugin): nothing is managed and any topic is accepted
    from a Tasmota config (`topic_of_login` answers "")."""

    def __init__(
        self,
        mqtt: MqttClient,
        state_dir: Path,
        *,
        enabled: bool,
        gateway_id: str = "",
        tasmota_prefix: str = "tasmota/discovery",
    ) -> None:
        self._mqtt = mqtt
        self.path = state_dir / LOGINS_FILE
        self.enabled = enabled
        self._gw = gateway_id
        self._tasmota_prefix = tasmota_prefix.rstrip("/")
        self._logins: dict[str, Login] = self._load() if enabled else {}
        self._lock = asyncio.Lock()
        self._waiting: dict[str, asyncio.Future[list[dict[str, Any]]]] = {}
        #: Told when a login is removed: the broker drops the device without its will, so
        #: nobody else would learn that it is gone.
        self.on_removed: list[Callable[[Login], None]] = []
        self._unsubscribe = mqtt.subscribe(f"{DYNSEC_TOPIC}/response", self._on_response) if enabled else None

    def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    # -- what adapters ask ----------------------------------------------------------------

    def topic_of_login(self, mac: str) -> str | None:
        """The topic a Tasmota with this MAC may use: "" = any (logins not managed), None = it
        has no login and is not accepted."""
        if not self.enabled:
            return ""
        login = next((x for x in self._logins.values() if x.kind == "tasmota" and x.mac == mac), None)
        return login.topic if login is not None else None

    def logins(self) -> list[Login]:
        return sorted(self._logins.values(), key=lambda x: x.username)

    # -- the installer's actions ----------------------------------------------------------

    async def create(self, kind: LoginKind, *, mac: str = "", topic: str = "") -> Credentials:
        """A new login for one device; its password is shown once and never stored here."""
        if not self.enabled:
            raise LoginError("device logins are off: set mqtt.device_logins (see `gateway logins init`)")
        if kind == "tasmota":
            try:
                mac = normalize_mac(mac)
            except ValueError as exc:
                raise LoginError(f"a Tasmota login needs the plug's MAC address: {exc}") from exc
            topic = topic or tasmota_default_topic(mac)
            username = f"tasmota-{mac}"
        elif kind == "zigbee2mqtt":
            topic = topic or "zigbee2mqtt"
            username = "zigbee2mqtt" if topic == "zigbee2mqtt" else f"zigbee2mqtt-{topic.replace('/', '-')}"
        else:
            topic, username = "", "homeassistant"
        if topic and not topic_level_ok(topic, allow_slash=kind == "zigbee2mqtt", max_len=64):
            raise LoginError(f"{topic!r} cannot be a topic: no +, #, $ or empty levels")
        if username in self._logins:
            raise LoginError(f"{username} exists; remove it first to make a new password")
        login = Login(
            username=username,
            kind=kind,
            created=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            mac=mac,
            topic=topic,
        )
        password = secrets.token_urlsafe(18)
        acls = _role_acls(login, tasmota_prefix=self._tasmota_prefix, gateway_id=self._gw)
        async with self._lock:
            await self._command(
                [
                    {"command": "deleteRole", "rolename": f"device-{username}"},
                    {"command": "createRole", "rolename": f"device-{username}", "acls": acls},
                    {
                        "command": "createClient",
                        "username": username,
                        "password": password,
                        "textName": f"{kind} {mac or topic}".strip(),
                        "roles": [{"rolename": f"device-{username}"}],
                    },
                ],
                tolerate=frozenset({"deleteRole"}),
            )
            self._logins[username] = login
            await asyncio.to_thread(self._save)
        log.info("broker login %s made for a %s device", username, kind)
        return Credentials(username, password, login)

    async def remove(self, username: str) -> bool:
        """Delete the login (the broker disconnects the device at once); False if unknown."""
        if username not in self._logins:
            return False
        async with self._lock:
            await self._command(
                [
                    {"command": "deleteClient", "username": username},
                    {"command": "deleteRole", "rolename": f"device-{username}"},
                ],
                tolerate=frozenset({"deleteRole"}),
            )
            login = self._logins.pop(username)
            await asyncio.to_thread(self._save)
        log.info("broker login %s removed", username)
        for listener in self.on_removed:
            listener(login)
        return True

    # -- the plugin's protocol ------------------------------------------------------------

    async def _command(
        self, commands: list[dict[str, Any]], *, tolerate: frozenset[str] = frozenset()
    ) -> None:
        correlation = secrets.token_hex(8)
        for c in commands:
            c["correlationData"] = f"{correlation}-{c['command']}"
        fut: asyncio.Future[list[dict[str, Any]]] = asyncio.get_running_loop().create_future()
        self._waiting[correlation] = fut
        try:
            await self._mqtt.publish_acked(DYNSEC_TOPIC, orjson.dumps({"commands": commands}))
            async with asyncio.timeout(_COMMAND_TIMEOUT_S):
                responses = await fut
        except (TimeoutError, BrokerError) as exc:
            raise LoginError(
                f"the broker's dynamic-security plugin did not answer ({exc or 'timeout'}); "
                "is it loaded, and is this the gateway's admin login?"
            ) from exc
        finally:
            self._waiting.pop(correlation, None)
        for response in responses:
            if response.get("error") and response.get("command") not in tolerate:
                raise LoginError(f"{response.get('command')}: {response['error']}")

    def _on_response(self, msg: Message) -> None:
        try:
            responses = json.loads(msg.payload)["responses"]
        except (ValueError, KeyError, TypeError):
            log.warning("dynamic-security: unreadable response")
            return
        if not isinstance(responses, list):
            return
        mine: dict[str, list[dict[str, Any]]] = {}
        for r in responses:
            if isinstance(r, dict):
                key = str(r.get("correlationData", "")).partition("-")[0]
                mine.setdefault(key, []).append(r)
        for key, batch in mine.items():
            fut = self._waiting.get(key)
            if fut is not None and not fut.done():
                fut.set_result(batch)

    # -- the record -----------------------------------------------------------------------

    def _load(self) -> dict[str, Login]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return {d["username"]: Login(**d) for d in data["logins"]}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # The logins stay in the broker; without the record, plugs wait until they are
            # listed again (`gateway logins add` after `remove`).
            log.error(
                "%s is damaged (%s); Tasmota configs are refused until logins are made again", self.path, exc
            )
            return {}

    def _save(self) -> None:
        data = {"version": 1, "logins": [asdict(x) for x in self.logins()]}
        write_private(self.path, json.dumps(data, ensure_ascii=False, indent=1) + "\n")
