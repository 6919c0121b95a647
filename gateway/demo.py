"""`gateway demo`: the whole system on one machine, with a live table.

The outer process opens the HTTP listening socket on the host (so a browser on this machine
reaches the TV menu), then re-runs itself inside a private user + network namespace
(gateway/netns.py) with that socket passed in. Inside: a private Mosquitto, the simulated
household (MQTT devices, and TVs, speakers and CoAP devices on their own 127.0.0.x addresses
announcing themselves by multicast) and the gateway. Every child dies with the demo; Ctrl-C
stops everything. The table is built from the gateway's public MQTT topics, as any LAN
client would see them.
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
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.text import Text

from gateway.broker import PrivateBroker
from gateway.mqtt import Message, MqttClient
from gateway.netns import enter_command, in_private_netns
from gateway.procs import Child, die_with_parent
from gateway.tables import devices_table
from gateway.web import bind

__all__ = ["DEMO_GATEWAY_ID", "run_demo"]

DEMO_GATEWAY_ID = "demo"
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _View:
    """Devices as seen on `home/demo/#`."""

    def __init__(self) -> None:
        self.devices: dict[str, dict[str, Any]] = {}
        self.status = "?"
        self.events: list[str] = []

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
        if self.events:
            parts.append(Text("最近事件 Recent events:\n" + "\n".join(self.events), style="dim"))
        parts.append(Text("Ctrl-C 退出 to stop", style="dim"))
        return Group(*parts)


def _self_cmd(tool: str) -> list[str]:
    """Our own console scripts with this interpreter (works without activating the venv)."""
    module = {"gateway": "gateway.cli", "firmware-sim": "firmware_sim.cli", "cloud": "cloud_bridge.cli"}[tool]
    return [sys.executable, "-m", module]


async def run_demo(
    *,
    http_port: int = 8080,
    duration_s: float | None = None,
    live: bool = True,
    http_fd: int | None = None,
) -> int:
    """Outside a private namespace: open the HTTP socket and re-run inside one."""
    if http_fd is not None or in_private_netns():
        sock = socket.socket(fileno=http_fd) if http_fd is not None else bind("127.0.0.1", http_port)
        return await _inside(sock, duration_s=duration_s, live=live)
    console = Console()
    try:
        sock = bind("127.0.0.1", http_port)
    except OSError as exc:
        console.print(f"[red]cannot listen on 127.0.0.1:{http_port}: {exc.strerror}; try --http-port 0[/red]")
        return 2
    argv = [*_self_cmd("gateway"), "demo", "--http-fd", str(sock.fileno())]
    if duration_s is not None:
        argv += ["--duration", str(duration_s)]
    if not live:
        argv.append("--no-live")
    loop = asyncio.get_running_loop()
    proc = await asyncio.create_subprocess_exec(
        *enter_command(argv),
        pass_fds=[sock.fileno()],
        preexec_fn=die_with_parent,
    )
    sock.close()
    # Ctrl-C reaches the whole process group; the inner demo does the stopping.
    for sig in _SIGNALS:
        loop.add_signal_handler(sig, lambda: None)
    try:
        return await proc.wait()
    finally:
        for sig in _SIGNALS:
            with contextlib.suppress(RuntimeError):
                loop.remove_signal_handler(sig)


async def _inside(sock: socket.socket, *, duration_s: float | None, live: bool) -> int:
    console = Console()
    workdir = Path(tempfile.mkdtemp(prefix="gateway-demo-"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in _SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    children: list[Child] = []
    try:
        async with PrivateBroker(workdir=workdir / "broker") as broker:
            console.print(f"[dim]broker {broker.url}, logs in {workdir}[/dim]")
            try:
                await _demo(broker, sock, workdir, children, console, stop, duration_s, live=live)
            finally:
                for child in reversed(children):
                    await child.stop()
    finally:
        sock.close()
        shutil.rmtree(workdir, ignore_errors=True)
        for sig in _SIGNALS:
            with contextlib.suppress(RuntimeError):
                loop.remove_signal_handler(sig)
    console.print("demo stopped; nothing left running.")
    return 0


def _header(port: int, broker: PrivateBroker, workdir: Path) -> str:
    enter = f"nsenter --target {os.getpid()} --user --net --preserve-credentials"
    return "\n".join(
        [
            f"TV menu 电视菜单:   http://127.0.0.1:{port}/",
            f"Gateway API:       http://127.0.0.1:{port}/api/v1/devices  (OpenAPI /openapi.json)",
            "The home LAN is a private network namespace; to look inside from another terminal:",
            f"  {enter} mosquitto_sub -p {broker.port} -t 'home/#' -v",
            f"  {enter} coap-client-notls -m get coap://127.0.0.21/3303/0",
            f"  {enter} dig -p 5353 @127.0.0.31 _services._dns-sd._udp.local PTR",
            f"Logs 日志:          {workdir}",
        ]
    )


async def _demo(
    broker: PrivateBroker,
    sock: socket.socket,
    workdir: Path,
    children: list[Child],
    console: Console,
    stop: asyncio.Event,
    duration_s: float | None,
    *,
    live: bool,
) -> None:
    loop = asyncio.get_running_loop()
    port = sock.getsockname()[1]
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
            *_self_cmd("gateway"), "run", "--mqtt", broker.url, "--state-dir", str(workdir / "state"),
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
    header = _header(port, broker, workdir)
    view = _View()
    watcher = MqttClient(host=broker.host, port=broker.port, client_id="demo-viewer", name="demo-viewer")
    watcher.subscribe(f"home/{DEMO_GATEWAY_ID}/#", view.on_message)
    async with asyncio.TaskGroup() as tg:
        watch_task = tg.create_task(watcher.run(), name="demo-viewer")
        deadline = loop.time() + duration_s if duration_s else None
        if live and console.is_terminal:
            with Live(view.render(header), console=console, refresh_per_second=2) as live_view:
                while not await _wait(stop, 0.5, deadline, loop):
                    live_view.update(view.render(header))
        else:
            console.print(header)
            while not await _wait(stop, 2.0, deadline, loop):
                console.print(view.render(header).renderables[2])
        await watcher.close()
        watch_task.cancel()
    console.print("stopping …")


async def _wait(
    stop: asyncio.Event, step_s: float, deadline: float | None, loop: asyncio.AbstractEventLoop
) -> bool:
    """Wait one refresh step; True when it is time to stop."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), step_s)
    return stop.is_set() or (deadline is not None and loop.time() >= deadline)
