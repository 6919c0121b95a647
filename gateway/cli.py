"""`gateway` command line: run, demo, config check, devices, doctor."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cloud_bridge.protocol import BridgeError
from gateway import __version__
from gateway.config import Settings, load_settings
from gateway.errors import GatewayError

__all__ = ["main"]

log = logging.getLogger("gateway")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # aiosqlite logs every statement at DEBUG; tortoise is chatty at INFO.
    logging.getLogger("aiosqlite").setLevel(logging.WARNING)
    logging.getLogger("tortoise").setLevel(logging.WARNING)
    # aiocoap logs every retransmission and odd peer at INFO/WARNING; we log peers ourselves.
    logging.getLogger("coap").setLevel(logging.ERROR)
    logging.getLogger("coap-server").setLevel(logging.ERROR)
    logging.getLogger("zeroconf").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", type=Path, help="TOML config file (default /etc/gateway/gateway.toml)")
    p.add_argument("--mqtt", metavar="URL", help="local broker, mqtt://HOST:PORT")
    p.add_argument("--state-dir", type=Path, metavar="DIR", help="where the registry and identity live")
    p.add_argument("--id", metavar="GATEWAY_ID", help="gateway id (default: derived from /etc/machine-id)")
    p.add_argument("--http", metavar="HOST:PORT", help="LAN HTTP listen address (default 0.0.0.0:8080)")
    p.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        "mqtt.url": args.mqtt,
        "state_dir": str(args.state_dir) if args.state_dir else None,
        "id": args.id,
        "http.listen": args.http,
        "log.level": args.log_level,
    }
    return load_settings(args.config, overrides=overrides)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="北方云家庭网关 Beifang Home Gateway")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the gateway daemon")
    _common(p)
    p.add_argument(
        "--http-fd", type=int, metavar="FD", help=argparse.SUPPRESS
    )  # an inherited listening socket (demo)

    p = sub.add_parser("demo", help="the whole system on this machine: broker, simulated home, gateway")
    p.add_argument("--http-port", type=int, default=8080, help="gateway HTTP port on 127.0.0.1 (0 = any)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument(
        "--no-live",
        action="store_true",
        help="print the table once a second instead of a live view",
    )
    p.add_argument(
        "--cloud-port", type=int, default=8090, help="reference cloud API port on 127.0.0.1 (0 = any)"
    )
    p.add_argument(
        "--alert-after",
        type=float,
        default=20.0,
        metavar="S",
        help="send an orange rainstorm warning through the cloud this long after start (0 = never)",
    )
    p.add_argument(
        "--hostile-after",
        type=float,
        default=75.0,
        metavar="S",
        help="a rogue device on the LAN attacks the gateway this long after start (0 = never)",
    )
    p.add_argument("--http-fd", type=int, help=argparse.SUPPRESS)  # inside the demo's namespace
    p.add_argument("--cloud-fd", type=int, help=argparse.SUPPRESS)

    p = sub.add_parser("config", help="configuration tools")
    csub = p.add_subparsers(dest="config_command", required=True)
    pc = csub.add_parser("check", help="validate a config file (and GATEWAY_* variables)")
    pc.add_argument("file", type=Path)
    pc = csub.add_parser("show", help="print the effective configuration as JSON")
    _common(pc)

    p = sub.add_parser("devices", help="devices of the running gateway")
    _common(p)
    p.add_argument("--url", help="gateway HTTP URL (default: what the running gateway wrote)")
    p.add_argument("--pending", action="store_true", help="devices waiting for approval")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    dsub = p.add_subparsers(dest="devices_command")
    pa = dsub.add_parser("approve", help="approve a pending device, optionally naming it")
    pa.add_argument("device_id", nargs="?", help="the device (see --pending); or --all")
    pa.add_argument("--all", action="store_true", help="approve every device waiting for approval")
    pa.add_argument("--name")
    pa.add_argument("--room")
    pa.add_argument(
        "--replaces",
        metavar="DEVICE_ID",
        help="the waiting device is this approved one at a new address (a TV that moved): "
        "it keeps its id, name and room",
    )
    pf = dsub.add_parser("forget", help="remove a device (its retained topics are cleared)")
    pf.add_argument("device_id")

    p = sub.add_parser("alerts", help="emergency alerts on the running gateway: active and recent")
    _common(p)
    p.add_argument("--url", help="gateway HTTP URL (default: what the running gateway wrote)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--ack", metavar="ID", help="acknowledge an active alert (as a person pressing OK)")

    p = sub.add_parser("pair", help="the household pairing PIN (as the TV shows it) and paired clients")
    _common(p)
    p.add_argument("--url", help="gateway HTTP URL (default: what the running gateway wrote)")
    p.add_argument("--list", action="store_true", help="list the paired household clients")
    p.add_argument("--revoke", metavar="NAME", help="revoke the household token paired under NAME")

    p = sub.add_parser("doctor", help="installer diagnostics; non-zero exit on failure")
    _common(p)

    p = sub.add_parser("provision", help="claim this box with the cloud using a work-order code")
    _common(p)
    p.add_argument(
        "--cloud", required=True, metavar="URL", help="the cloud's API, e.g. https://cloud.example:8443"
    )
    p.add_argument("--code", required=True, help="the work-order code, e.g. K7QF-9M2X-RT")
    p.add_argument("--ca", metavar="FILE", help="CA bundle to check the cloud's HTTPS certificate")

    p = sub.add_parser("logins", help="broker logins, one per device (Mosquitto's dynamic-security plugin)")
    common = argparse.ArgumentParser(add_help=False)
    _common(common)
    common.add_argument("--url", help="gateway HTTP URL (default: what the running gateway wrote)")
    lsub = p.add_subparsers(dest="logins_command", metavar="ACTION", required=True)
    pl = lsub.add_parser(
        "init",
        parents=[common],
        help="set up the box's broker: the plugin's file and the gateway's own login",
    )
    pl.add_argument(
        "--dynsec-file",
        type=Path,
        default=Path("/var/lib/mosquitto/dynamic-security.json"),
        help="the plugin's file, as in the Mosquitto config (default %(default)s)",
    )
    pl.add_argument("--username", default="gateway", help="the gateway daemon's login (default %(default)s)")
    pl.add_argument("--force", action="store_true", help="replace an existing file (every login is lost)")
    pl = lsub.add_parser("add", parents=[common], help="a login for one device; prints what to enter on it")
    pl.add_argument("kind", choices=["tasmota", "zigbee2mqtt", "homeassistant"])
    pl.add_argument("--mac", default="", help="Tasmota: the plug's MAC (on its web page, Information)")
    pl.add_argument(
        "--topic", default="", help="Tasmota: its topic (default tasmota_<MAC6>); Zigbee2MQTT: base topic"
    )
    pl.add_argument("--json", action="store_true", help="print JSON")
    pl = lsub.add_parser(
        "remove", parents=[common], help="delete a login; the device is disconnected at once"
    )
    pl.add_argument("username")
    lsub.add_parser("list", parents=[common], help="the logins the gateway made (never their passwords)")

    p = sub.add_parser("reset", help="reset the box")
    _common(p)
    p.add_argument("--factory", action="store_true", required=True, help="wipe identity and household data")
    p.add_argument("--yes", action="store_true", help="do not ask")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "demo":
            from gateway.demo import run_demo  # noqa: PLC0415 - the demo pulls in rich and simulators

            _setup_logging("WARNING")
            return asyncio.run(
                run_demo(
                    http_port=args.http_port,
                    cloud_port=args.cloud_port,
                    alert_after_s=args.alert_after,
                    hostile_after_s=args.hostile_after,
                    duration_s=args.duration,
                    live=not args.no_live,
                    http_fd=args.http_fd,
                    cloud_fd=args.cloud_fd,
                )
            )
        if args.command == "config":
            return _cmd_config(args)
        if args.command == "alerts":
            return _cmd_alerts(args)
        if args.command == "pair":
            return _cmd_pair(args)
        if args.command == "devices":
            return _cmd_devices(args)
        if args.command == "logins":
            return _cmd_logins(args)
        if args.command == "provision":
            return _cmd_provision(args)
        if args.command == "reset":
            return _cmd_reset(args)
        if args.command == "doctor":
            from gateway.doctor import run_doctor  # noqa: PLC0415

            settings_error: GatewayError | None = None
            settings: Settings | None = None
            try:
                settings = _settings(args)
            except GatewayError as exc:
                settings_error = exc
            return asyncio.run(run_doctor(settings, settings_error, config_path=args.config))
    except (GatewayError, BridgeError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


def _cmd_run(args: argparse.Namespace) -> int:
    from gateway.daemon import Gateway  # noqa: PLC0415
    from gateway.systemd import Notifier  # noqa: PLC0415

    settings = _settings(args)
    _setup_logging(settings.log.level)
    http_socket = None
    if args.http_fd is not None:
        import socket  # noqa: PLC0415

        http_socket = socket.socket(fileno=args.http_fd)
        http_socket.setblocking(False)
    gateway = Gateway(settings, notifier=Notifier.from_environ(os.environ), http_socket=http_socket)
    asyncio.run(gateway.run())
    return gateway.exit_code


def _cmd_provision(args: argparse.Namespace) -> int:
    from gateway.provision import provision  # noqa: PLC0415

    settings = _settings(args)
    settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    result = provision(
        settings.state_dir,
        cloud_url=args.cloud,
        code=args.code,
        gateway_id=settings.id,
        verify=args.ca or True,
    )
    rec = result.identity.record
    print(f"provisioned {rec.gateway_id}: household {rec.household}, region {rec.region}")
    print(f"  cloud link {rec.mqtt_url}, certificate valid until {result.cert_not_after}")
    print(f"  identity stored in {result.identity.directory} (owner-only); restart the gateway to connect")
    return 0


def _cmd_reset(args: argparse.Namespace) -> int:
    from gateway.provision import factory_reset  # noqa: PLC0415

    settings = _settings(args)
    if not args.yes:
        answer = input(f"Wipe the cloud identity and all household data in {settings.state_dir}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing changed")
            return 1
    removed = factory_reset(settings.state_dir)
    print("removed: " + (", ".join(removed) if removed else "nothing (already clean)"))
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    if args.config_command == "check":
        if not args.file.exists():
            print(f"gateway: {args.file}: no such file", file=sys.stderr)
            return 2
        settings = load_settings(args.file)
        print(
            f"{args.file}: OK (gateway {settings.id}, broker {settings.mqtt.url}, state {settings.state_dir})"
        )
        return 0
    settings = _settings(args)
    print(settings.model_dump_json(indent=2))
    return 0


def _local_api(args: argparse.Namespace, *, admin: bool) -> tuple[str, dict[str, str]]:
    """The running gateway's HTTP URL and, for `admin`, the installer's token header."""
    from gateway.daemon import HTTP_URL_FILE  # noqa: PLC0415
    from gateway.web import ADMIN_TOKEN_FILE  # noqa: PLC0415

    settings = _settings(args)
    url: str | None = args.url
    if url is None:
        try:
            url = (settings.state_dir / HTTP_URL_FILE).read_text().strip()
        except OSError:
            host, _, port = settings.http.listen.rpartition(":")
            url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '', 'lan') else host}:{port}"  # noqa: S104
    headers: dict[str, str] = {}
    if admin:
        try:
            token = (settings.state_dir / ADMIN_TOKEN_FILE).read_text().strip()
        except OSError as exc:
            raise GatewayError(
                f"cannot read the admin token in {settings.state_dir} ({exc.strerror});"
                " run this on the gateway as its user, with the same --state-dir"
            ) from exc
        headers["Authorization"] = f"Bearer {token}"
    return url, headers


def _unreachable(url: str, exc: Exception) -> GatewayError:
    return GatewayError(f"cannot reach the gateway at {url} ({exc}); is `gateway run` running? (use --url)")


def _cmd_alerts(args: argparse.Namespace) -> int:
    import httpx  # noqa: PLC0415

    url, headers = _local_api(args, admin=bool(args.ack))
    try:
        with httpx.Client(base_url=url, timeout=10.0, headers=headers) as client:
            if args.ack:
                return _report(client.post(f"/api/v1/alerts/{args.ack}/ack"), f"acknowledged {args.ack}")
            r = client.get("/api/v1/alerts")
    except httpx.HTTPError as exc:
        raise _unreachable(url, exc) from exc
    r.raise_for_status()
    alerts = r.json()
    if args.json:
        print(json.dumps(alerts, ensure_ascii=False, indent=2))
        return 0
    from rich.console import Console  # noqa: PLC0415

    from gateway.tables import alerts_table  # noqa: PLC0415

    console = Console()
    if not alerts["active"]:
        console.print("没有生效的预警 No active alert")
    else:
        console.print(alerts_table(alerts["active"], title="生效的预警 Active alerts"))
    if alerts["history"]:
        console.print(alerts_table(alerts["history"], title="最近的预警 Recent alerts"))
    return 0


def _cmd_pair(args: argparse.Namespace) -> int:
    import httpx  # noqa: PLC0415

    url, headers = _local_api(args, admin=True)
    try:
        with httpx.Client(base_url=url, timeout=10.0, headers=headers) as client:
            if args.revoke:
                r = client.delete(f"/api/v1/pair/tokens/{args.revoke}")
                return _report(r, f"revoked {args.revoke}")
            r = client.get("/api/v1/pair/tokens" if args.list else "/api/v1/pairing")
    except httpx.HTTPError as exc:
        raise _unreachable(url, exc) from exc
    if r.status_code >= 300:
        return _report(r, "")
    if args.list:
        tokens = r.json()
        for t in tokens:
            print(f"{t['name']}\t{t['created']}")
        if not tokens:
            print("没有已配对的设备 No household client is paired")
        return 0
    pin = r.json()
    left = "{}:{:02d}".format(*divmod(int(pin["expires_in_s"]), 60))
    print(f"配对码 Pairing PIN: {pin['pin']}  ({left} 后更换 changes in {left})")
    return 0


def _cmd_devices(args: argparse.Namespace) -> int:
    import httpx  # noqa: PLC0415

    url, headers = _local_api(args, admin=bool(args.devices_command))
    try:
        with httpx.Client(base_url=url, timeout=10.0, headers=headers) as client:
            if args.devices_command == "approve":
                return _approve(client, args)
            if args.devices_command == "forget":
                r = client.delete(f"/api/v1/devices/{args.device_id}")
                return _report(r, f"forgot {args.device_id}")
            r = client.get("/api/v1/devices", params={"pending": str(args.pending).lower()})
    except httpx.HTTPError as exc:
        raise _unreachable(url, exc) from exc
    r.raise_for_status()
    devices = r.json()
    if args.json:
        print(json.dumps(devices, ensure_ascii=False, indent=2))
        return 0
    from rich.console import Console  # noqa: PLC0415

    from gateway.tables import devices_table  # noqa: PLC0415

    title = "待批准设备 Pending devices" if args.pending else "设备 Devices"
    Console().print(devices_table(devices, title=title, addresses=args.pending))
    return 0


def _cmd_logins(args: argparse.Namespace) -> int:
    if args.logins_command == "init":
        return _logins_init(args)
    import httpx  # noqa: PLC0415

    url, headers = _local_api(args, admin=True)
    try:
        with httpx.Client(base_url=url, timeout=15.0, headers=headers) as client:
            if args.logins_command == "add":
                r = client.post(
                    "/api/v1/logins", json={"kind": args.kind, "mac": args.mac, "topic": args.topic}
                )
                if r.status_code != 201:
                    return _report(r, "")
                made = r.json()
                if args.json:
                    print(json.dumps(made, ensure_ascii=False, indent=2))
                else:
                    _print_login(made, _settings(args))
                return 0
            if args.logins_command == "remove":
                return _report(client.delete(f"/api/v1/logins/{args.username}"), f"removed {args.username}")
            r = client.get("/api/v1/logins")
    except httpx.HTTPError as exc:
        raise _unreachable(url, exc) from exc
    if r.status_code != 200:
        return _report(r, "")
    for login in r.json():
        print(f"{login['username']:<28} {login['kind']:<14} {login['topic'] or '-':<24} {login['created']}")
    return 0


def _print_login(made: dict[str, Any], settings: Settings) -> None:
    """What the installer types into the device, zh-CN first."""
    from gateway.devices.mdns import resolve_interfaces  # noqa: PLC0415

    try:
        host = resolve_interfaces(settings.discovery.interfaces)[0]
    except GatewayError:
        host = "<网关的局域网地址 the box's LAN address>"
    port = settings.mqtt.port
    if made["kind"] == "tasmota":
        print("在插座网页 配置 → MQTT 中填写 / On the plug's web page, Configuration → MQTT:")
        rows = [
            ("Host", host), ("Port", str(port)), ("Client", made["client_id"]),
            ("User", made["username"]), ("Password", made["password"]), ("Topic", made["topic"]),
        ]  # fmt: skip
    elif made["kind"] == "zigbee2mqtt":
        print("写入 Zigbee2MQTT 的 configuration.yaml / In Zigbee2MQTT's configuration.yaml, under mqtt:")
        rows = [
            ("server", f"mqtt://{host}:{port}"), ("user", made["username"]), ("password", made["password"]),
            ("base_topic", made["topic"]), ("client_id", made["client_id"]),
        ]  # fmt: skip
    else:
        print("Home Assistant → MQTT 集成 / Home Assistant's MQTT integration:")
        rows = [
            ("Broker", host),
            ("Port", str(port)),
            ("Username", made["username"]),
            ("Password", made["password"]),
        ]
    for key, value in rows:
        print(f"  {key:<11} {value}")
    print("密码只显示这一次 The password is shown only this once.")


def _logins_init(args: argparse.Namespace) -> int:
    from gateway.logins import dynsec_config, write_private  # noqa: PLC0415

    settings = _settings(args)
    target: Path = args.dynsec_file
    if target.exists() and not args.force:
        raise GatewayError(f"{target} exists; --force replaces it (and every login in it)")
    password = secrets.token_urlsafe(24)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_private(target, json.dumps(dynsec_config(args.username, password), indent=1) + "\n")
    secret = settings.state_dir / "mqtt.password"
    settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    write_private(secret, password + "\n")
    if os.geteuid() == 0:
        _give(target, "mosquitto")
        _give(secret, "gateway")
    print(f"wrote {target} and {secret}")
    print("Add to /etc/gateway/gateway.toml:")
    print(f'  [mqtt]\n  username = "{args.username}"\n  password_file = "{secret}"\n  device_logins = true')
    print("then restart mosquitto and the gateway (docs/installer-guide.md).")
    return 0


def _give(path: Path, user: str) -> None:
    """Hand a file to a system user when it exists (the broker reads its file as `mosquitto`)."""
    import pwd  # noqa: PLC0415

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return
    try:
        os.chown(path, entry.pw_uid, entry.pw_gid)
    except OSError as exc:
        print(f"could not give {path} to {user} ({exc.strerror}); run: chown {user}: {path}", file=sys.stderr)


def _approve(client: Any, args: argparse.Namespace) -> int:
    if args.all == bool(args.device_id):
        raise GatewayError("name one device to approve, or --all")
    if args.all:
        waiting = client.get("/api/v1/devices", params={"pending": "true"})
        waiting.raise_for_status()
        ids = [d["info"]["id"] for d in waiting.json()]
        failed = sum(
            _report(client.post(f"/api/v1/devices/{i}/approve", json={}), f"approved {i}") for i in ids
        )
        print(
            f"{len(ids) - failed} devices approved 已批准"
            if ids
            else "no device waits for approval 没有待批准设备"
        )
        return 1 if failed else 0
    body = {"name": args.name, "room": args.room, "replaces": args.replaces}
    r = client.post(f"/api/v1/devices/{args.device_id}/approve", json=body)
    done = (
        f"{args.replaces} is now at {args.device_id}'s address"
        if args.replaces
        else f"approved {args.device_id}"
    )
    return _report(r, done)


def _report(response: Any, ok: str) -> int:
    if response.status_code < 300:
        print(ok)
        return 0
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = response.text
    print(f"gateway: {response.status_code}: {detail}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
