"""`cloud` command line: run the reference cloud (`cloud serve`) and talk to a running one.

The client commands use the cloud's HTTP API: its URL comes from `--cloud`, `$CLOUD_URL` or the
data directory's `cloud.json`; the token from `--token`, `$CLOUD_TOKEN` or the data directory's
`tokens/`. Errors say what to do; the exit code is 0 on success, 1 on failure, 2 on usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from cloud_bridge.cloud import CLOUD_JSON, DEFAULT_HTTP, DEFAULT_PUBLIC_HOST, ROLES, default_data_dir
from cloud_bridge.examples import SERVICE_EXAMPLES, rainstorm_alert, service_example
from cloud_bridge.protocol import BridgeError
from gateway import __version__
from gateway.errors import GatewayError

__all__ = ["main"]

log = logging.getLogger("cloud_bridge")

_HTTP_TIMEOUT_S = 10.0


class CliError(BridgeError):
    """A client command failed; the message is for the person at the terminal."""


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # aiosqlite and asyncpg are chatty at DEBUG; tortoise at INFO.
    logging.getLogger("aiosqlite").setLevel(logging.WARNING)
    logging.getLogger("tortoise").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)


# -- parser -----------------------------------------------------------------------------------


def _client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cloud", metavar="URL", help="the cloud's API URL (default: from the data directory)")
    p.add_argument("--token", help="API token (default: $CLOUD_TOKEN or the data directory's tokens/)")
    p.add_argument("--json", action="store_true", help="print the API's JSON answer")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cloud", description="北方云 reference cloud (operator side)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="state directory (default $CLOUD_DATA_DIR, else ~/.local/state/beifang-cloud; "
        "as root /var/lib/beifang-cloud)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the reference cloud")
    p.add_argument("--mqtt", metavar="URL", help="an external broker, mqtts://HOST:PORT (default: start one)")
    p.add_argument(
        "--mqtt-port", type=int, metavar="PORT", help="port of the development broker (default: free)"
    )
    p.add_argument(
        "--db", metavar="URL", help="sqlite:///PATH or postgres://USER@HOST/DB (default $DATABASE_URL)"
    )
    p.add_argument(
        "--http", metavar="HOST:PORT", default=DEFAULT_HTTP, help=f"API listen address ({DEFAULT_HTTP})"
    )
    p.add_argument(
        "--public-host", default=DEFAULT_PUBLIC_HOST, help="host name gateways use to reach the cloud"
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    # Listening sockets to serve the API on, instead of --http (gateway demo: host and namespace).
    p.add_argument("--http-fd", type=int, action="append", default=[], help=argparse.SUPPRESS)

    p = sub.add_parser("workorder", help="work orders for installers")
    wsub = p.add_subparsers(dest="action", required=True)
    w = wsub.add_parser("create", help="a single-use provisioning code for a household")
    w.add_argument("--household", required=True)
    w.add_argument("--region", required=True, help="行政区划代码, e.g. 210102")
    w.add_argument("--ttl", type=float, metavar="S", help="seconds the code stays valid (default 3 days)")
    _client_options(w)

    p = sub.add_parser("gateways", help="list provisioned gateways")
    p.add_argument("--region", help="region code prefix, e.g. 21 or 2101")
    p.add_argument("--online", action="store_true", help="only gateways that are online")
    _client_options(p)

    p = sub.add_parser("push", help="push a service (JSON file) to regions, gateways or everyone")
    p.add_argument(
        "file", type=Path, metavar="FILE.json", help='the service: {"service_id": ..., "version": ...}'
    )
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--region", action="append", metavar="CODE", help="a target region (repeatable)")
    target.add_argument("--gateway", action="append", metavar="ID", help="a target gateway (repeatable)")
    target.add_argument("--all", action="store_true", help="every gateway")
    _client_options(p)

    p = sub.add_parser("service", help="service definitions")
    ssub = p.add_subparsers(dest="action", required=True)
    s = ssub.add_parser("example", help="print an example definition: cloud service example shop > shop.json")
    s.add_argument("kind", choices=SERVICE_EXAMPLES)

    p = sub.add_parser("shop", help="the shop back end: orders, simulated payments, delivery")
    shsub = p.add_subparsers(dest="action", required=True)
    s = shsub.add_parser("orders", help="orders, newest first")
    _client_options(s)
    s = shsub.add_parser("pay", help="simulate the payment provider's callback for an order")
    s.add_argument("order")
    _client_options(s)
    s = shsub.add_parser("status", help="mark an order shipped, delivered or cancelled")
    s.add_argument("order")
    s.add_argument("state", choices=["shipped", "delivered", "cancelled"])
    _client_options(s)

    p = sub.add_parser("command", help="send a command to a gateway and wait for its reply")
    p.add_argument("gateway")
    p.add_argument("name", choices=["diagnostics", "reboot", "set_config"])
    p.add_argument(
        "--arg", action="append", default=[], metavar="KEY=VALUE", help="argument (JSON value or text)"
    )
    p.add_argument("--timeout", type=float, default=10.0, metavar="S")
    _client_options(p)

    p = sub.add_parser("alert", help="emergency alerts (应急广播)")
    asub = p.add_subparsers(dest="action", required=True)
    a = asub.add_parser("send", help="send a CAP 1.2 alert (XML or JSON file; - reads stdin)")
    a.add_argument("file", metavar="FILE")
    a.add_argument(
        "--region", action="append", metavar="CODE", help="target region (repeatable; default: CAP geocodes)"
    )
    _client_options(a)
    a = asub.add_parser(
        "example",
        help="print a ready-to-send rainstorm warning (times now): cloud alert example | cloud alert send -",
    )
    a.add_argument("--colour", choices=["blue", "yellow", "orange", "red"], default="orange")
    a.add_argument("--region", default="210102", metavar="CODE", help="行政区划代码 (default 210102)")
    a.add_argument("--drill", action="store_true", help="status Exercise: a drill, labelled as such")
    a = asub.add_parser("list", help="alerts sent, newest first")
    a.add_argument("--active", action="store_true", help="only alerts still in force")
    _client_options(a)
    a = asub.add_parser("status", help="per-gateway receipts and coverage of one alert")
    a.add_argument("id")
    _client_options(a)

    p = sub.add_parser("keys", help="signing keys")
    ksub = p.add_subparsers(dest="action", required=True)
    k = ksub.add_parser("rotate", help="new signing key, announced to every gateway")
    _client_options(k)
    k = ksub.add_parser("list", help="signing keys and which one signs")
    _client_options(k)

    p = sub.add_parser("token", help="API tokens")
    tsub = p.add_subparsers(dest="action", required=True)
    t = tsub.add_parser("show", help="print a role's token (read from the data directory)")
    t.add_argument("role", choices=ROLES)
    return parser


# -- serve ------------------------------------------------------------------------------------


def _serve(args: argparse.Namespace, data_dir: Path, environ: Mapping[str, str]) -> int:
    # The server's stack (FastAPI, tortoise, ...) loads only for `serve`: client commands stay quick.
    from cloud_bridge.cloud.server import Cloud, CloudSettings  # noqa: PLC0415

    _setup_logging(args.log_level)
    if args.mqtt and args.mqtt_port:
        print("cloud: --mqtt-port is for the development broker; leave it out with --mqtt", file=sys.stderr)
        return 2
    settings = CloudSettings(
        data_dir=data_dir.resolve(),
        db_url=args.db or environ.get("DATABASE_URL") or None,
        http_listen=args.http,
        mqtt_url=args.mqtt,
        mqtt_port=args.mqtt_port,
        public_host=args.public_host,
    )
    try:
        socks = [socket.socket(fileno=fd) for fd in args.http_fd]
        asyncio.run(Cloud(settings, http_sockets=socks).run())
    except (BridgeError, GatewayError) as exc:
        log.error("%s", exc)
        return 1
    return 0


# -- client commands ---------------------------------------------------------------------------


class _Client:
    def __init__(
        self, args: argparse.Namespace, data_dir: Path, environ: Mapping[str, str], role: str
    ) -> None:
        self.url = (args.cloud or environ.get("CLOUD_URL") or self._url_from(data_dir)).rstrip("/")
        self.token = args.token or environ.get("CLOUD_TOKEN") or self._token_from(data_dir, role)

    @staticmethod
    def _url_from(data_dir: Path) -> str:
        try:
            return str(json.loads((data_dir / CLOUD_JSON).read_text())["api_url"])
        except (OSError, ValueError, KeyError) as exc:
            raise CliError(
                f"no running cloud found in {data_dir}: start `cloud serve`, or pass --cloud URL "
                "(or --data-dir where it runs)"
            ) from exc

    @staticmethod
    def _token_from(data_dir: Path, role: str) -> str:
        for candidate in (role, "operator") if role != "operator" else (role,):
            try:
                return (data_dir / "tokens" / f"{candidate}.token").read_text().strip()
            except OSError:
                continue
        raise CliError(
            f"no {role} token in {data_dir / 'tokens'}: pass --token (ask the operator for it) "
            "or set CLOUD_TOKEN"
        )

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        timeout_s: float = _HTTP_TIMEOUT_S,
        content: bytes | None = None,
        content_type: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            resp = httpx.request(
                method,
                self.url + path,
                json=body,
                content=content,
                params=params,
                headers=headers,
                timeout=timeout_s,
            )
        except httpx.HTTPError as exc:
            raise CliError(
                f"cannot reach the cloud at {self.url} ({exc}): is `cloud serve` running?"
            ) from exc
        if resp.status_code == 401:
            raise CliError(
                "the cloud refused the token: use `cloud token show operator` on the cloud's machine, "
                "then pass it with --token or CLOUD_TOKEN"
            )
        if resp.status_code >= 400:
            raise CliError(_problem_text(resp))
        return resp.json()


def _problem_text(resp: httpx.Response) -> str:
    try:
        detail = resp.json().get("detail")
    except ValueError:
        return f"HTTP {resp.status_code}: {resp.text[:200]}"
    if isinstance(detail, dict):
        return f"{detail.get('reason', resp.status_code)}: {detail.get('message', '')}"
    return f"HTTP {resp.status_code}: {detail}"


def _parse_arg(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise CliError(f"--arg must look like KEY=VALUE (got {text!r})")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


def _print_json(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False, indent=2))


def _gateways_table(rows: list[dict[str, Any]]) -> None:
    table = Table(title=f"gateways ({len(rows)})")
    for column in ("id", "household", "region", "online", "last seen", "version", "devices", "cert until"):
        table.add_column(column)
    for g in rows:
        table.add_row(
            g["id"],
            g["household"],
            g["region"],
            "[green]online[/]" if g["online"] else "[red]offline[/]",
            g.get("last_seen") or "-",
            g.get("version") or "-",
            str(g.get("devices", 0)),
            (g.get("cert_not_after") or "")[:10],
        )
    Console().print(table)


def _alert_command(args: argparse.Namespace, client: _Client) -> int:
    if args.action == "send":
        try:
            raw = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
        except OSError as exc:
            raise CliError(f"cannot read the alert from {args.file}: {exc}") from exc
        kind = "application/json" if raw.lstrip()[:1] in (b"{", b"[") else "application/cap+xml"
        params = {"region": args.region} if args.region else None
        result = client.request("POST", "/v1/alerts", content=raw, content_type=kind, params=params)
        if args.json:
            _print_json(result)
        else:
            again = " (already sent before: not resent)" if result["duplicate"] else ""
            print(
                f"alert {result['id']}{again}: {result['msg_type']}, level {result['priority']}, "
                f"to {', '.join(result['targets'])}, {result['gateways_expected']} gateways"
            )
            print(f"follow it with: cloud alert status {result['id']}")
        return 0
    if args.action == "list":
        rows = client.request("GET", "/v1/alerts", params={"active": "true"} if args.active else None)
        if args.json:
            _print_json(rows)
            return 0
        table = Table(title=f"alerts ({len(rows)})")
        for column in (
            "id",
            "state",
            "since",
            "type",
            "level",
            "headline",
            "targets",
            "gateways",
            "accepted",
        ):
            table.add_column(column)
        for a in rows:
            table.add_row(
                a["id"], a["state"], a["state_changed_at"], a["msg_type"], str(a["priority"]),
                a.get("headline") or "-", ",".join(a["targets"]), str(a["gateways_expected"]),
                a["accepted_at"],
            )  # fmt: skip
        Console().print(table)
        return 0
    st = client.request("GET", f"/v1/alerts/{args.id}")
    if args.json:
        _print_json(st)
        return 0
    cov = st["coverage"]
    table = Table(
        title=f"{st['id']} {st.get('headline') or ''} ({st['state']} since {st['state_changed_at']}): "
        f"{cov['gateways_received']}/{cov['gateways_expected']} gateways, "
        f"{cov['devices_presented']}/{cov['devices_known']} screens and speakers"
    )
    for column in ("gateway", "received", "result", "displayed", "spoken", "acknowledged", "ended"):
        table.add_column(column)
    for g in st["gateways"]:
        table.add_row(
            g["id"],
            g["received"] or "[red]not yet[/]",
            g["result"] or g["suppressed"] or "-",
            str(len(g["displayed"])),
            str(len(g["spoken"])),
            g["acknowledged"] or "-",
            (g["ended"] or {}).get("how", "-"),
        )
    Console().print(table)
    return 0


def _client_command(args: argparse.Namespace, data_dir: Path, environ: Mapping[str, str]) -> int:
    role = "installer" if args.command == "workorder" else "operator"
    client = _Client(args, data_dir, environ, role)
    if args.command == "workorder":
        body: dict[str, Any] = {"household": args.household, "region": args.region}
        if args.ttl is not None:
            body["ttl_s"] = args.ttl
        order = client.request("POST", "/v1/workorders", body)
        if args.json:
            _print_json(order)
        else:
            print(order["code"])
            print(
                f"household {order['household']}, region {order['region']}, valid until {order['expires_at']}"
            )
        return 0
    if args.command == "gateways":
        query: dict[str, str] = {}
        if args.region:
            query["region"] = args.region
        if args.online:
            query["online"] = "true"
        path = "/v1/gateways" + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
        rows = client.request("GET", path)
        _print_json(rows) if args.json else _gateways_table(rows)
        return 0
    if args.command == "push":
        try:
            service = json.loads(args.file.read_text())
        except (OSError, ValueError) as exc:
            raise CliError(f"cannot read the service from {args.file}: {exc}") from exc
        target: dict[str, Any] = (
            {"all": True}
            if args.all
            else {"regions": args.region}
            if args.region
            else {"gateways": args.gateway}
        )
        result = client.request("POST", "/v1/services/push", {"target": target, "service": service})
        _print_json(result) if args.json else print(f"pushed {result['id']} to {', '.join(result['topics'])}")
        return 0
    if args.command == "command":
        cmd = {"name": args.name, "args": dict(_parse_arg(a) for a in args.arg), "timeout_s": args.timeout}
        result = client.request(
            "POST", f"/v1/gateways/{args.gateway}/commands", cmd, timeout_s=args.timeout + _HTTP_TIMEOUT_S
        )
        _print_json(result)
        return 0 if result.get("status") == "ok" else 1
    if args.command == "alert":
        return _alert_command(args, client)
    if args.command == "shop":
        return _shop_command(args, client)
    if args.command == "keys" and args.action == "rotate":
        result = client.request("POST", "/v1/keys/rotate")
        if args.json:
            _print_json(result)
        else:
            print(
                f"signing with {result['kid']} (was {result['previous_kid']}); "
                f"{result['notified']} gateways told"
            )
        return 0
    if args.command == "keys":
        keys = client.request("GET", "/v1/keys")
        if args.json:
            _print_json(keys)
        else:
            for k in keys:
                mark = "current" if k["current"] else "retired" if k["retired"] else "trusted"
                print(f"{k['n']:>3}  {k['kid']}  {mark}")
        return 0
    raise CliError(f"unknown command {args.command}")


_ORDER_STATES = {
    "pending": "待确认 pending",
    "confirmed": "待支付 confirmed",
    "price_changed": "价格变动 price changed",
    "rejected": "已拒绝 rejected",
    "paid": "已支付 paid",
    "shipped": "已发货 shipped",
    "delivered": "已送达 delivered",
    "cancelled": "已取消 cancelled",
}


def _shop_command(args: argparse.Namespace, client: _Client) -> int:
    if args.action == "pay":
        order = client.request("POST", f"/v1/shop/payments/{args.order}/callback")
    elif args.action == "status":
        order = client.request("POST", f"/v1/shop/orders/{args.order}/status", {"state": args.state})
    else:
        orders = client.request("GET", "/v1/shop/orders")
        if args.json:
            _print_json(orders)
            return 0
        for o in orders:
            lines = ", ".join(f"{line['item_id']} ×{line['quantity']}" for line in o["lines"])
            state = _ORDER_STATES.get(o["state"], o["state"])
            print(f"{o['id']}  {o['gateway_id']}  ¥{o['total_fen'] / 100:.2f}  {state}  {lines}")
        if not orders:
            print("没有订单 No orders")
        return 0
    if args.json:
        _print_json(order)
    else:
        print(f"{order['id']}: {_ORDER_STATES.get(order['state'], order['state'])}")
    return 0


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    args = _parser().parse_args(argv)
    data_dir: Path = args.data_dir or default_data_dir(env)
    if args.command == "serve":
        return _serve(args, data_dir, env)
    try:
        if args.command == "token":
            try:
                print((data_dir / "tokens" / f"{args.role}.token").read_text().strip())
            except OSError as exc:
                raise CliError(
                    f"no {args.role} token in {data_dir / 'tokens'}: run `cloud serve` once "
                    "(it creates the tokens), or pass --data-dir"
                ) from exc
            return 0
        if args.command == "service":
            print(json.dumps(service_example(args.kind), ensure_ascii=False, indent=2))
            return 0
        if args.command == "alert" and args.action == "example":
            kind = "Exercise" if args.drill else "Actual"
            try:
                xml = rainstorm_alert(args.colour, args.region, status=kind)
            except ValueError as exc:
                raise CliError(str(exc)) from exc
            sys.stdout.write(xml.decode())
            return 0
        return _client_command(args, data_dir, env)
    except CliError as exc:
        print(f"cloud: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
