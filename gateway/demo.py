"""`gateway demo`: the whole system on one machine, with a live table.

The outer process opens the HTTP listening socket on the host (so a browser on this machine
reaches the TV menu), then re-runs itself inside a private user + network namespace
(gateway/netns.py) with that socket passed in, and the reference cloud's API socket too.
Inside: the reference cloud (its API, its TLS broker), a private Mosquitto, the simulated
household (MQTT devices, and TVs, speakers and CoAP devices on their own 127.0.0.x addresses
announcing themselves by multicast) and the gateway, provisioned with a work order as an
installer would. A while after start the demo sends an orange rainstorm warning through the
operator API, and shows its delivery receipts. Every child dies with the demo; Ctrl-C stops
everything. The table is built from the gateway's public MQTT topics, as any LAN client would
see them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.text import Text

from cloud_bridge.examples import SERVICE_EXAMPLES, rainstorm_alert, service_example
from gateway.broker import PrivateBroker
from gateway.errors import GatewayError
from gateway.mqtt import Message, MqttClient
from gateway.netns import enter_command, in_private_netns
from gateway.procs import Child, die_with_parent
from gateway.tables import devices_table
from gateway.web import bind

__all__ = ["DEMO_GATEWAY_ID", "run_demo"]

DEMO_GATEWAY_ID = "demo"
DEMO_REGION = "210102"  # 辽宁省沈阳市和平区
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_ALERT_POLL_S = 1.0
#: How long the demo's installer stays on site approving what the gateway finds: terminals
#: and CoAP devices have no credentials, so they wait for an installer (docs/security.md).
_INSTALLER_VISIT_S = 60.0


class _View:
    """Devices as seen on `home/demo/#`."""

    def __init__(self) -> None:
        self.devices: dict[str, dict[str, Any]] = {}
        self.status = "?"
        self.events: list[str] = []
        self.alert = ""
        self.hostile: list[str] = []

    def on_message(self, msg: Message) -> None:
        parts = msg.topic.split("/")
        if parts[2:] == ["status"]:
            self.status = msg.payload.decode(errors="replace")
            return
        if len(parts) >= 4 and parts[2] == "event":
            line = f"{time.strftime('%H:%M:%S')} {parts[3]}: {msg.payload.decode(errors='replace')[:120]}"
            self.events = [line, *self.events][:5]
            return
        if len(parts) != 5 or parts[2] != "device":
            return
        dev_id, leaf = parts[3], parts[4]
        if not msg.payload:
            self.devices.pop(dev_id, None)
            return
        entry = self.devices.setdefault(dev_id, {"info": None, "state": {}, "online": False})
        try:
            if leaf == "info":
                entry["info"] = json.loads(msg.payload)
            elif leaf == "state":
                entry["state"] = json.loads(msg.payload)
            elif leaf == "availability":
                entry["online"] = msg.payload == b"online"
        except ValueError:
            pass

    def render(self, header: str) -> Group:
        rows = [d for _, d in sorted(self.devices.items()) if d["info"]]
        status = Text(
            f"gateway {DEMO_GATEWAY_ID}: {self.status}",
            style="green" if self.status == "online" else "red",
        )
        parts: list[Any] = [Panel(header, title="北方云家庭网关 演示 Beifang Home Gateway demo"), status]
        parts.append(devices_table(rows, title=f"设备 Devices ({len(rows)})"))
        if self.alert:
            parts.append(Text(self.alert, style="bold"))
        if self.hostile:
            parts.append(
                Text("恶意设备演示 A hostile device on the LAN:\n" + "\n".join(self.hostile), style="yellow")
            )
        if self.events:
            parts.append(Text("最近事件 Recent events:\n" + "\n".join(self.events), style="dim"))
        parts.append(Text("Ctrl-C 退出 to stop", style="dim"))
        return Group(*parts)


def _self_cmd(tool: str) -> list[str]:
    """Our own console scripts with this interpreter (works without activating the venv)."""
    module = {"gateway": "gateway.cli", "firmware-sim": "firmware_sim.cli", "cloud": "cloud_bridge.cli"}[tool]
    return [sys.executable, "-m", module]


@dataclass(frozen=True, slots=True)
class _Options:
    duration_s: float | None
    live: bool
    alert_after_s: float
    hostile_after_s: float = 0.0


async def run_demo(
    *,
    http_port: int = 8080,
    cloud_port: int = 8090,
    alert_after_s: float = 20.0,
    hostile_after_s: float = 75.0,
    duration_s: float | None = None,
    live: bool = True,
    http_fd: int | None = None,
    cloud_fd: int | None = None,
) -> int:
    """Outside a private namespace: open the HTTP sockets and re-run inside one."""
    options = _Options(duration_s, live, alert_after_s, hostile_after_s)
    if http_fd is not None or in_private_netns():
        sock = socket.socket(fileno=http_fd) if http_fd is not None else bind("127.0.0.1", http_port)
        cloud = socket.socket(fileno=cloud_fd) if cloud_fd is not None else bind("127.0.0.1", cloud_port)
        return await _inside(sock, cloud, options)
    console = Console()
    socks: list[socket.socket] = []
    for what, port, flag in (("gateway", http_port, "--http-port"), ("cloud", cloud_port, "--cloud-port")):
        try:
            socks.append(bind("127.0.0.1", port))
        except OSError as exc:
            console.print(
                f"[red]cannot listen on 127.0.0.1:{port} for the {what}: {exc.strerror}; try {flag} 0[/red]"
            )
            for opened in socks:
                opened.close()
            return 2
    sock, cloud = socks
    argv = [*_self_cmd("gateway"), "demo", "--http-fd", str(sock.fileno()), "--cloud-fd", str(cloud.fileno())]
    argv += ["--alert-after", str(alert_after_s), "--hostile-after", str(hostile_after_s)]
    if duration_s is not None:
        argv += ["--duration", str(duration_s)]
    if not live:
        argv.append("--no-live")
    loop = asyncio.get_running_loop()
    proc = await asyncio.create_subprocess_exec(
        *enter_command(argv),
        pass_fds=[sock.fileno(), cloud.fileno()],
        preexec_fn=die_with_parent,
    )
    sock.close()
    cloud.close()
    # The inner demo does the stopping: pass the signal on (Ctrl-C reaches it twice; harmless).
    for sig in _SIGNALS:
        loop.add_signal_handler(sig, _forward, proc, sig)
    try:
        return await proc.wait()
    finally:
        for sig in _SIGNALS:
            with contextlib.suppress(RuntimeError):
                loop.remove_signal_handler(sig)


def _forward(proc: asyncio.subprocess.Process, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)


async def _inside(sock: socket.socket, cloud_sock: socket.socket, options: _Options) -> int:
    console = Console()
    workdir = Path(tempfile.mkdtemp(prefix="gateway-demo-"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in _SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    children: list[Child] = []
    # The cloud's API inside the namespace, for the gateway's provisioning (the host socket
    # is for the operator's browser and CLI).
    inner = bind("127.0.0.1", 0)
    try:
        async with PrivateBroker(workdir=workdir / "broker") as broker:
            console.print(f"[dim]broker {broker.url}, logs in {workdir}[/dim]")
            try:
                await _demo(broker, sock, (cloud_sock, inner), workdir, children, console, stop, options)
            except GatewayError as exc:
                console.print(f"[red]demo failed: {exc}[/red]")
                return 1
            finally:
                for child in reversed(children):
                    await child.stop()
    finally:
        for s in (sock, cloud_sock, inner):
            s.close()
        shutil.rmtree(workdir, ignore_errors=True)
        for sig in _SIGNALS:
            with contextlib.suppress(RuntimeError):
                loop.remove_signal_handler(sig)
    console.print("demo stopped; nothing left running.")
    return 0


def _header(port: int, cloud_port: int, broker: PrivateBroker, workdir: Path, services: list[str]) -> str:
    enter = f"nsenter --target {os.getpid()} --user --net --preserve-credentials"
    cloud_dir = workdir / "cloud"
    return "\n".join(
        [
            f"TV menu 电视菜单:       http://127.0.0.1:{port}/",
            f"Gateway API 网关接口:   http://127.0.0.1:{port}/api/v1/devices  (OpenAPI /openapi.json)",
            f"Operator API 运营商接口: http://127.0.0.1:{cloud_port}/docs",
            f"  token:                cloud --data-dir {cloud_dir} token show operator",
            "Send an alert 发送预警:",
            f"  cloud alert example --colour red | cloud --data-dir {cloud_dir} alert send -",
            f"Pairing PIN 配对码:     gateway pair --state-dir {workdir / 'state'} --id {DEMO_GATEWAY_ID}"
            f" --url http://127.0.0.1:{port}",
            f"Services 服务 (TV menu → 服务, pushed by the operator): {'; '.join(services)}",
            f"  orders 订单:          cloud --data-dir {cloud_dir} shop orders",
            f"  pay 模拟支付:         cloud --data-dir {cloud_dir} shop pay ORDER_ID",
            "Speak to the living-room speaker 对客厅音箱说话 (also: What's the temperature in the bedroom?):",
            f"  {enter} curl -s http://127.0.0.33:8080/api/v1/hear -H 'Content-Type: application/json'"
            """ -d '{"text": "打开客厅的灯"}'""",
            "The home LAN is a private network namespace; to look inside from another terminal:",
            f"  {enter} mosquitto_sub -p {broker.port} -t 'home/#' -v",
            f"  {enter} coap-client-notls -m get coap://127.0.0.21/3303/0",
            f"  {enter} dig -p 5353 @127.0.0.31 _services._dns-sd._udp.local PTR",
            f"Logs 日志:              {workdir}",
        ]
    )  # fmt: skip


async def _run_tool(argv: list[str], what: str) -> str:
    """Run one of our CLIs to completion; its stdout, or GatewayError with its stderr."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, preexec_fn=die_with_parent
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise GatewayError(f"{what} failed: {err.decode(errors='replace').strip()[-500:]}")
    return out.decode()


async def _start_cloud(
    cloud_socks: tuple[socket.socket, socket.socket], workdir: Path, children: list[Child]
) -> tuple[Path, str]:
    """The reference cloud, and a work order for this home; (data dir, inner API URL)."""
    data = workdir / "cloud"
    fds = [str(s.fileno()) for s in cloud_socks]
    cloud = Child(
        "cloud",
        [*_self_cmd("cloud"), "--data-dir", str(data), "serve", "--http-fd", fds[0], "--http-fd", fds[1]],
        log_path=workdir / "cloud.log",
        ready=r"cloud ready",
        pass_fds=[s.fileno() for s in cloud_socks],
    )
    await cloud.start(timeout_s=30)
    children.append(cloud)
    return data, f"http://127.0.0.1:{cloud_socks[1].getsockname()[1]}"


async def _provision(data: Path, api: str, state_dir: Path) -> None:
    """What the installer does on site: a work order from the operator, then `gateway provision`."""
    order = json.loads(
        await _run_tool(
            [*_self_cmd("cloud"), "--data-dir", str(data), "workorder", "create", "--cloud", api,
             "--household", "演示家庭 demo home", "--region", DEMO_REGION, "--json"],
            "work order",
        )
    )  # fmt: skip
    await _run_tool(
        [*_self_cmd("gateway"), "provision", "--cloud", api, "--code", order["code"],
         "--id", DEMO_GATEWAY_ID, "--state-dir", str(state_dir)],
        "provisioning",
    )  # fmt: skip


async def _push_services(api: str, token: str) -> list[str]:
    """The operator's one call per service: a shop and the city's government services, to the
    demo's region. Returns their titles."""
    titles = []
    async with httpx.AsyncClient(
        base_url=api, headers={"Authorization": f"Bearer {token}"}, timeout=10, trust_env=False
    ) as client:
        for kind in SERVICE_EXAMPLES:
            service = service_example(kind)
            resp = await client.post(
                "/v1/services/push", json={"target": {"regions": [DEMO_REGION]}, "service": service}
            )
            if resp.status_code != 200:
                raise GatewayError(
                    f"the cloud refused the {kind} example: {resp.status_code} {resp.text[:300]}"
                )
            titles.append(f"{service['title']} {service['title_en']}")
    return titles


async def _alert(api: str, token: str, view: _View, after_s: float) -> None:
    """Send an orange rainstorm warning through the operator API, then follow its receipts."""
    await asyncio.sleep(after_s)
    async with httpx.AsyncClient(
        base_url=api, headers={"Authorization": f"Bearer {token}"}, timeout=10, trust_env=False
    ) as client:
        resp = await client.post(
            "/v1/alerts",
            content=rainstorm_alert("orange", DEMO_REGION),
            headers={"Content-Type": "application/cap+xml"},
        )
        if resp.status_code != 201:
            view.alert = f"应急广播 alert not accepted: {resp.status_code} {resp.text[:200]}"
            return
        alert_id = resp.json()["id"]
        while True:
            st = (await client.get(f"/v1/alerts/{alert_id}")).json()
            cov = st["coverage"]
            view.alert = (
                f"应急广播 Emergency alert: {st['headline']} — 网关 gateways {cov['gateways_received']}/"
                f"{cov['gateways_expected']}, 屏幕和音箱 screens and speakers "
                f"{cov['devices_presented']}/{cov['devices_known']}  (cloud alert status {alert_id})"
            )
            await asyncio.sleep(_ALERT_POLL_S)


#: The demo's rogue device: each attack as `firmware-sim hostile` runs it, a real process on
#: the home LAN, and what the gateway should do about it.
_HOSTILE = [
    (["impostor", "--target-id", "tv-5c0a1b2c3d4e", "--address", "127.0.0.60", "--duration-s", "8"],
     "冒充客厅电视 an impostor of the living-room TV: it waits; no alert, no voice command for it"),
    (["nested-json", "--address", "127.0.0.61", "--duration-s", "4"],
     "100,000 层嵌套的 JSON nested JSON: dropped and counted"),
    (["huge-info", "--address", "127.0.0.62", "--duration-s", "4"],
     "150 MB 的设备信息 a 150 MB /info: cut off at 64 KiB"),
    (["terminal-flood", "--count", "100", "--address", "127.0.0.63", "--duration-s", "8"],
     "100 台假电视 100 fake TVs: the inbox stays bounded, the real TVs keep their sessions"),
    (["http-pair-guess", "--count", "30", "--source-addresses", "127.0.0.70,127.0.0.71,127.0.0.72"],
     "猜配对码 30 PIN guesses: held back, the family can still pair"),
]  # fmt: skip


async def _hostile(state_dir: Path, view: _View, after_s: float) -> None:
    """A rogue device performs one attack after the other; the view shows what the gateway did."""
    await asyncio.sleep(after_s)
    url = (state_dir / "http.url").read_text().strip()
    token = (state_dir / "admin.token").read_text().strip()
    for args, what in _HOSTILE:
        view.hostile.append(f"  … {what}")
        extra = ["--url", url] if args[0].startswith("http-") else []
        try:
            await _run_tool([*_self_cmd("firmware-sim"), "hostile", *args, *extra], args[0])
            view.hostile[-1] = f"  ✔ {what}"
        except GatewayError as exc:
            view.hostile[-1] = f"  ✘ {what}: {exc}"
    async with httpx.AsyncClient(base_url=url, timeout=10, trust_env=False) as client:
        health = (
            await client.get("/api/v1/health/detail", headers={"Authorization": f"Bearer {token}"})
        ).json()
    refused = "; ".join(
        f"{adapter}: " + ", ".join(f"{r} {n}" for r, n in reasons.items())
        for adapter, reasons in health["drops"].items()
    )
    view.hostile.append(
        f"  网关拒绝了 the gateway refused — {refused}; 仍在运行 still up, {health['devices']} devices"
    )


async def _installer(state_dir: Path, view: _View, visit_s: float) -> None:
    """The installer on site: approves the devices the gateway found in the household, as
    `gateway devices approve ID` would, for the length of the visit. What turns up later waits."""
    url = (state_dir / "http.url").read_text().strip()
    token = (state_dir / "admin.token").read_text().strip()
    loop = asyncio.get_running_loop()
    leave = loop.time() + visit_s
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10, trust_env=False
    ) as client:
        while loop.time() < leave:
            with contextlib.suppress(httpx.HTTPError):
                waiting = (await client.get("/api/v1/devices", params={"pending": "true"})).json()
                for dev in waiting:
                    info = dev["info"]
                    if (
                        await client.post(f"/api/v1/devices/{info['id']}/approve", json={})
                    ).status_code == 200:
                        what = f"装机员批准 installer approved {info['name']} ({info['id']})"
                        line = f"{time.strftime('%H:%M:%S')} {what}"
                        view.events = [line, *view.events][:5]
            await asyncio.sleep(2.0)


async def _demo(
    broker: PrivateBroker,
    sock: socket.socket,
    cloud_socks: tuple[socket.socket, socket.socket],
    workdir: Path,
    children: list[Child],
    console: Console,
    stop: asyncio.Event,
    options: _Options,
) -> None:
    loop = asyncio.get_running_loop()
    port = sock.getsockname()[1]
    state_dir = workdir / "state"
    with console.status("starting the reference cloud 北方云 …"):
        cloud_data, cloud_api = await _start_cloud(cloud_socks, workdir, children)
    with console.status("provisioning the gateway with a work order …"):
        await _provision(cloud_data, cloud_api, state_dir)
    household = Child(
        "household",
        [*_self_cmd("firmware-sim"), "household", "--mqtt", broker.url, "--tele-period", "5"],
        log_path=workdir / "household.log",
        ready=r"household ready",
    )
    env = {
        **os.environ,
        "GATEWAY_DISCOVERY__INTERFACES": "lo",
        "GATEWAY_DISCOVERY__COAP_INTERVAL_S": "10",
    }
    gateway = Child(
        "gateway",
        [
            *_self_cmd("gateway"), "run", "--mqtt", broker.url, "--state-dir", str(state_dir),
            "--id", DEMO_GATEWAY_ID, "--http-fd", str(sock.fileno()),
        ],
        log_path=workdir / "gateway.log",
        ready=r" ready: ",
        env=env,
        pass_fds=[sock.fileno()],
    )  # fmt: skip
    for child in (household, gateway):
        with console.status(f"starting {child.name} …"):
            await child.start(timeout_s=30)
        children.append(child)
    token = (cloud_data / "tokens" / "operator.token").read_text().strip()
    with console.status("pushing a shop and government services to the home's region …"):
        services = await _push_services(cloud_api, token)
    header = _header(port, cloud_socks[0].getsockname()[1], broker, workdir, services)
    view = _View()
    watcher = MqttClient(host=broker.host, port=broker.port, client_id="demo-viewer", name="demo-viewer")
    watcher.subscribe(f"home/{DEMO_GATEWAY_ID}/#", view.on_message)
    async with asyncio.TaskGroup() as tg:
        watch_task = tg.create_task(watcher.run(), name="demo-viewer")
        # The installer has left before the rogue device shows up.
        visit_s = (
            min(_INSTALLER_VISIT_S, options.hostile_after_s - 5) if options.hostile_after_s > 0 else 60.0
        )
        side = [watch_task, tg.create_task(_installer(state_dir, view, visit_s), name="demo-installer")]
        if options.hostile_after_s > 0:
            side.append(
                tg.create_task(_hostile(state_dir, view, options.hostile_after_s), name="demo-hostile")
            )
        if options.alert_after_s > 0:
            side.append(
                tg.create_task(_alert(cloud_api, token, view, options.alert_after_s), name="demo-alert")
            )
        deadline = loop.time() + options.duration_s if options.duration_s else None
        if options.live and console.is_terminal:
            with Live(view.render(header), console=console, refresh_per_second=2) as live_view:
                while not await _wait(stop, 0.5, deadline, loop):
                    live_view.update(view.render(header))
        else:
            console.print(header)
            shown, hostile_shown = "", 0
            while not await _wait(stop, 2.0, deadline, loop):
                console.print(view.render(header).renderables[2])
                if view.alert != shown:
                    shown = view.alert
                    console.print(shown)
                done = [line for line in view.hostile if not line.startswith("  …")]
                for line in done[hostile_shown:]:
                    console.print(f"恶意设备 hostile device:{line}")
                hostile_shown = len(done)
        await watcher.close()
        for task in side:
            task.cancel()
    console.print("stopping …")


async def _wait(
    stop: asyncio.Event, step_s: float, deadline: float | None, loop: asyncio.AbstractEventLoop
) -> bool:
    """Wait one refresh step; True when it is time to stop."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(step_s):
            await stop.wait()
    return stop.is_set() or (deadline is not None and loop.time() >= deadline)
