"""Gateway settings: one tree, loaded once at start-up, passed into constructors.

Sources, lowest to highest priority: built-in defaults, the TOML file
(`/etc/gateway/gateway.toml` unless told otherwise), `GATEWAY_*` environment variables
(nested keys joined with `__`, e.g. `GATEWAY_MQTT__URL`), then command-line flags.
A bad file or value fails at start with a message naming the key, where it came from and
what is allowed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_origin
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
)

from gateway.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ENV_PREFIX",
    "HttpSettings",
    "LanSettings",
    "MqttSettings",
    "Settings",
    "load_settings",
    "parse_host_port",
]

DEFAULT_CONFIG_PATH = Path("/etc/gateway/gateway.toml")
ENV_PREFIX = "GATEWAY_"
SYSTEM_STATE_DIR = Path("/var/lib/gateway")
DEFAULT_MQTT_URL = "mqtt://127.0.0.1:1883"
#: `lan` stands for every address of `discovery.interfaces`, plus 127.0.0.1 for the box itself.
DEFAULT_HTTP_LISTEN = "lan:8080"


def _check_mqtt_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError("must look like mqtt://HOST:PORT or mqtts://HOST:PORT")
    try:
        _ = parts.port
    except ValueError as exc:
        raise ValueError("port must be a number between 1 and 65535") from exc
    return url


def parse_host_port(text: str) -> tuple[str, int]:
    """`HOST:PORT` (or `[v6]:PORT`) → (host, port); ValueError with a readable message."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("must look like HOST:PORT, for example 0.0.0.0:8080")
    return host.strip("[]"), int(port)


def _check_listen(text: str) -> str:
    parse_host_port(text)
    return text


MqttUrl = Annotated[str, AfterValidator(_check_mqtt_url)]
Listen = Annotated[str, AfterValidator(_check_listen)]
GatewayId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,47}$")]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MqttSettings(_Section):
    """The local broker (Mosquitto on the box)."""

    url: MqttUrl = DEFAULT_MQTT_URL
    username: str | None = None
    password: SecretStr | None = None
    #: A file holding the password (as `gateway logins init` writes it); used when `password`
    #: is not set.
    password_file: Path | None = None
    #: The broker runs the dynamic-security plugin and this login administers it: the gateway
    #: gives each Tasmota and Zigbee2MQTT device a login of its own (`gateway logins add`) and
    #: accepts a Tasmota config only from a MAC that has one (docs/installer-guide.md).
    device_logins: bool = False
    client_id: str | None = Field(default=None, max_length=64)
    keepalive_s: int = Field(default=30, ge=5, le=600)
    connect_timeout_s: float = Field(default=5.0, gt=0, le=60)
    #: Reconnect backoff: full jitter between min and an exponentially growing cap.
    #: The cap is small because the broker is local: retained topics must be back within 5 s.
    reconnect_min_s: float = Field(default=0.1, gt=0, le=60)
    reconnect_max_s: float = Field(default=2.0, gt=0, le=300)
    #: QoS of `state` publishes; info, availability and discovery always use QoS 1.
    state_qos: Literal[0, 1] = 0

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"


class HttpSettings(_Section):
    """The gateway's LAN HTTP server: TV menu at `/`, JSON API under `/api/v1/`."""

    model_config = ConfigDict(populate_by_name=True)

    enabled: bool = True
    #: HOST:PORT. The host `lan` means every address of `discovery.interfaces` plus 127.0.0.1:
    #: never the operator's side of the box.
    listen: Listen = DEFAULT_HTTP_LISTEN
    #: More names the box answers to in `Host` (for example its name in the home router's DNS).
    #: Its own addresses, `localhost` and `<gateway id>.local` are always accepted.
    allowed_hosts: tuple[str, ...] = ()
    #: The pairing PIN appears on the box's own screen and on approved TVs (their settings
    #: screen); off: only `gateway pair` on the box shows it. (Formerly `show_pin_on_lan`.)
    show_pin_on_screens: bool = Field(
        default=True, validation_alias=AliasChoices("show_pin_on_screens", "show_pin_on_lan")
    )
    pin_lifetime_s: float = Field(default=600.0, ge=30, le=86400)
    #: Live-update streams (`/api/v1/stream`) one LAN client may hold, and all non-screen
    #: clients together; screens (the box, approved TVs) always get theirs.
    max_streams_per_client: int = Field(default=4, ge=1, le=100)
    max_streams: int = Field(default=32, ge=1, le=1000)


class RegistrySettings(_Section):
    """Device registry (SQLite in the state directory)."""

    #: Last state and last-seen are written behind, at most this far behind the live value.
    flush_interval_s: float = Field(default=2.0, gt=0, le=300)
    #: SQLite `synchronous` for the registry. NORMAL is safe with WAL (no corruption on power
    #: loss; the last flush may be lost); FULL also keeps that flush.
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL"


class DiscoverySettings(_Section):
    """LAN discovery (mDNS/DNS-SD, CoAP multicast) and the installer inbox."""

    #: Protocols whose newly found devices are approved without an installer. Tasmota and
    #: Zigbee2MQTT devices reach the gateway only through a broker login the installer gave
    #: them, so their arrival is already the installer's doing. Operator terminals, CoAP and
    #: third-party mDNS devices have no credentials: anyone on the LAN can claim to be one (a
    #: fake smoke detector would raise an alarm, a fake speaker would give voice commands), so
    #: they wait for the installer (docs/security.md).
    auto_approve: tuple[str, ...] = ("tasmota", "zigbee2mqtt")
    #: LAN interfaces (names or IPv4 addresses) for multicast. Never all interfaces: the box
    #: also faces the operator's network.
    interfaces: tuple[str, ...] = ("br-lan",)
    mdns: bool = True
    coap: bool = True
    #: Announce the gateway as `_bfy-gateway._tcp`.
    announce: bool = True
    #: CoAP multicast discovery period, and how long to collect answers each time.
    coap_interval_s: float = Field(default=60.0, gt=0, le=86400)
    coap_window_s: float = Field(default=2.0, gt=0, le=30)
    #: A CoAP observation that stays silent this long is re-registered; failing that, offline.
    coap_observe_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    #: An operator terminal whose event stream is silent this long is offline (it sends a
    #: keep-alive every 15 s).
    terminal_event_timeout_s: float = Field(default=45.0, gt=0, le=3600)


class LanSettings(_Section):
    """Bounds on everything a peer on the home network sends (docs/configuration.md). Over a
    bound the input is dropped, counted and logged, never kept. The defaults fit a 1 GB
    set-top box: the whole LAN side stays within a few tens of MB however a peer behaves."""

    #: One JSON message from a device (terminal event, Tasmota or Zigbee2MQTT state, CoAP SenML).
    max_json_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    #: How deeply arrays and objects may nest in a device's JSON (real payloads use 3 or 4).
    max_json_depth: int = Field(default=32, ge=4, le=1000)
    #: A terminal's `/info` answer, and one server-sent event line or event.
    max_http_body_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    #: An mDNS TXT record (RFC 6763 §6.2: up to 1300 bytes still fits one packet).
    max_txt_bytes: int = Field(default=1300, ge=200, le=9000)
    #: The Zigbee2MQTT device list (`bridge/devices`), which lists every paired device: room for
    #: `max_devices_per_protocol` devices with long `exposes`. A larger list is refused whole
    #: (parsing it would cost its size several times over); raise both for a bigger network.
    max_device_list_bytes: int = Field(default=1024 * 1024, ge=64 * 1024, le=64 * 1024 * 1024)
    #: Devices one protocol may bring into the registry (approved and waiting).
    max_devices_per_protocol: int = Field(default=128, ge=1, le=10_000)
    #: Devices one protocol may have waiting for the installer (the inbox).
    max_pending_per_protocol: int = Field(default=32, ge=1, le=10_000)
    #: Devices one physical device may become (Tasmota relays, Zigbee endpoints, CoAP objects).
    max_channels_per_device: int = Field(default=32, ge=1, le=256)
    #: Tasmota sensor announcements kept while their device's config has not arrived yet.
    max_early_sensors: int = Field(default=64, ge=0, le=10_000)


class TasmotaSettings(_Section):
    enabled: bool = True
    discovery_prefix: str = Field(default="tasmota/discovery", min_length=1)


class Zigbee2MqttSettings(_Section):
    enabled: bool = True
    base_topic: str = Field(default="zigbee2mqtt", min_length=1)


class HomeAssistantSettings(_Section):
    enabled: bool = True
    discovery_prefix: str = Field(default="homeassistant", min_length=1)
    status_topic: str = Field(default="homeassistant/status", min_length=1)


class CloudSettings(_Section):
    """The link to 北方云 (active once the box is provisioned)."""

    enabled: bool = True
    #: Device shadows go up at most this often per device (changes are coalesced).
    telemetry_interval_s: float = Field(default=10.0, gt=0, le=3600)
    #: A message the cloud has not acknowledged after this long is sent again.
    ack_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    outbox_max_messages: int = Field(default=50_000, ge=100, le=10_000_000)
    reconnect_max_s: float = Field(default=30.0, gt=0, le=600)
    #: What people say to the speakers, and the answers, stay in the home unless this is on
    #: (for example while the household takes part in a speech-recognition trial).
    share_voice_transcripts: bool = False


class AlertSettings(_Section):
    """Emergency alerts in the home."""

    #: The household's language: shown and spoken first.
    language: str = Field(default="zh-CN", pattern=r"^[a-zA-Z]{2,3}(-[a-zA-Z0-9]{2,8})*$")
    #: Exercise and Test alerts: shown clearly labelled as drills, or not at all.
    drills: Literal["label", "hide"] = "label"
    #: An alert without `expires` ends this long after it was sent.
    default_expiry_h: float = Field(default=6.0, gt=0, le=168)
    #: Level-1 alerts are announced again this often until acknowledged, at most this many times.
    repeat_interval_s: float = Field(default=60.0, ge=5, le=3600)
    repeat_count: int = Field(default=5, ge=1, le=100)


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Settings(_Section):
    """The whole settings tree."""

    id: GatewayId
    state_dir: Path
    mqtt: MqttSettings = MqttSettings()
    http: HttpSettings = HttpSettings()
    registry: RegistrySettings = RegistrySettings()
    discovery: DiscoverySettings = DiscoverySettings()
    lan: LanSettings = LanSettings()
    tasmota: TasmotaSettings = TasmotaSettings()
    zigbee2mqtt: Zigbee2MqttSettings = Zigbee2MqttSettings()
    homeassistant: HomeAssistantSettings = HomeAssistantSettings()
    cloud: CloudSettings = CloudSettings()
    alerts: AlertSettings = AlertSettings()
    log: LogSettings = LogSettings()
    #: How often the watchdog is fed when systemd asks for one (fraction of WatchdogSec).
    watchdog_fraction: float = Field(default=0.5, gt=0, lt=1)

    @property
    def mqtt_client_id(self) -> str:
        return self.mqtt.client_id or f"gateway-{self.id}"


def default_gateway_id(machine_id_path: Path = Path("/etc/machine-id")) -> str:
    """A stable id for this box: a hash of systemd's machine id (never the raw id, RFC-ish
    privacy advice of machine-id(5)), or of the hostname when there is none."""
    try:
        seed = machine_id_path.read_text().strip()
    except OSError:
        seed = ""
    seed = seed or os.uname().nodename
    return "gw-" + hashlib.sha256(f"beifang-gateway:{seed}".encode()).hexdigest()[:12]


def default_state_dir(environ: Mapping[str, str]) -> Path:
    """systemd's STATE_DIRECTORY, else /var/lib/gateway for root, else the XDG state dir."""
    if environ.get("STATE_DIRECTORY"):
        return Path(environ["STATE_DIRECTORY"].split(":")[0])
    if os.geteuid() == 0:
        return SYSTEM_STATE_DIR
    base = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "beifang-gateway"


def _env_overrides(environ: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    """`GATEWAY_MQTT__URL=x` → {"mqtt.url": (x, "GATEWAY_MQTT__URL")}."""
    out: dict[str, tuple[Any, str]] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == "GATEWAY_CONFIG":
            continue
        dotted = ".".join(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
        try:
            value: Any = json.loads(raw)
            if not isinstance(value, list | bool | int | float):
                value = raw
        except ValueError:
            value = raw
        if isinstance(value, str) and _is_sequence(dotted):
            value = [v.strip() for v in value.split(",") if v.strip()]
        out[dotted] = (value, name)
    return out


def _is_sequence(dotted: str) -> bool:
    """Whether a settings key holds a list (then `a,b` in the environment means two items)."""
    model: type[BaseModel] = Settings
    *parents, leaf = dotted.split(".")
    for part in parents:
        field = model.model_fields.get(part)
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return False
        model = ann
    field = model.model_fields.get(leaf)
    return field is not None and get_origin(field.annotation) in (tuple, list)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[leaf] = value


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from exc


def _allowed_keys(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return sorted(model.model_fields)


def load_settings(
    path: Path | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Load and validate the settings; raise ConfigError naming the key on any problem.

    `path=None` reads `GATEWAY_CONFIG` or the default path if it exists (no file is fine);
    an explicit path must exist. `overrides` are dotted keys from command-line flags.
    """
    env = dict(os.environ if environ is None else environ)
    sources: dict[str, str] = {}
    tree: dict[str, Any] = {}
    if path is None and env.get("GATEWAY_CONFIG"):
        path = Path(env["GATEWAY_CONFIG"])
    elif path is None and DEFAULT_CONFIG_PATH.exists():
        path = DEFAULT_CONFIG_PATH
    if path is not None:
        tree = _read_toml(path)
        origin = str(path)
        stack: list[tuple[str, Any]] = [("", tree)]
        while stack:
            prefix, node = stack.pop()
            for key, value in node.items():
                dotted = f"{prefix}{key}"
                sources[dotted] = origin
                if isinstance(value, dict):
                    stack.append((dotted + ".", value))
    for dotted, (value, var) in _env_overrides(env).items():
        _set_dotted(tree, dotted, value)
        sources[dotted] = var
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(tree, dotted, value)
            sources[dotted] = "command line"
    tree.setdefault("id", default_gateway_id())
    tree.setdefault("state_dir", str(default_state_dir(env)))
    try:
        return Settings.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, sources)) from exc


def _explain(exc: ValidationError, sources: Mapping[str, str]) -> str:
    lines = ["invalid configuration:"]
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc)
        origin = sources.get(key, "default")
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(_allowed_keys(Settings, loc))
            lines.append(f"  {key} ({origin}): unknown key; allowed here: {allowed}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            secret = any(word in key for word in ("password", "token", "secret", "key"))
            shown = "***" if secret else repr(err.get("input"))
            lines.append(f"  {key} ({origin}): {msg} (got {shown})")
    return "\n".join(lines)
