"""`gateway run`: the daemon's lifecycle.

One root TaskGroup owns every long-running task. SIGTERM/SIGINT set a stop flag; the daemon
then publishes `offline` on its status topic, disconnects, stops its tasks, writes the
registry one last time and closes it. systemd gets READY=1 and watchdog pings.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import ifaddr
from fastapi import FastAPI

from cloud_bridge.agent import CloudAgent
from cloud_bridge.identity import Identity, NotProvisioned
from cloud_bridge.outbox import MessageClass, Outbox
from cloud_bridge.protocol import Envelope
from gateway import __version__
from gateway.bus import Bus
from gateway.config import Settings, parse_host_port
from gateway.contract import MqttContract, status_will
from gateway.devices.base import Adapter
from gateway.devices.coap import CoapAdapter
from gateway.devices.mdns import MdnsDeviceAdapter, MdnsDiscovery, resolve_interfaces
from gateway.devices.tasmota import TasmotaAdapter
from gateway.devices.terminal import SERVICE_TYPE as TERMINAL_SERVICE
from gateway.devices.terminal import TerminalAdapter
from gateway.devices.zigbee2mqtt import Zigbee2MqttAdapter
from gateway.errors import BrokerError, GatewayError
from gateway.hub import Hub
from gateway.logins import DeviceLogins
from gateway.mqtt import MqttClient, Will
from gateway.registry import Registry
from gateway.services.alerts import AlertPolicy, AlertService
from gateway.services.commerce import OperatorServices, commerce_router
from gateway.services.govservice import GovDesk, govservice_router
from gateway.services.pairing import Pairing, pairing_router
from gateway.services.shopping_voice import ShoppingByVoice
from gateway.services.tvmenu import tvmenu_router
from gateway.services.voice import VoiceService
from gateway.systemd import Notifier
from gateway.web import WebContext, bind, create_app, load_admin_token, logins_router, serve

__all__ = ["EXIT_RESTART", "HTTP_URL_FILE", "OUTBOX_FILE", "Gateway", "broker_password"]

log = logging.getLogger(__name__)

HTTP_URL_FILE = "http.url"
OUTBOX_FILE = "outbox.sqlite3"
EXIT_RESTART = 75  # EX_TEMPFAIL: systemd restarts us (Restart=on-failure)
_HTTP_READY_TIMEOUT_S = 5.0
_SUPERVISE_MAX_S = 30.0


@dataclass
class _Lan:
    adapters: list[Adapter] = field(default_factory=list)
    mdns: MdnsDiscovery | None = None


class Gateway:
    """The whole daemon. `await Gateway(settings).run()` until `stop()` or a signal."""

    def __init__(
        self,
        settings: Settings,
        *,
        notifier: Notifier | None = None,
        http_socket: socket.socket | None = None,
    ) -> None:
        self.settings = settings
        self._notifier = notifier or Notifier(None)
        self._http_socket = http_socket
        self._stop = asyncio.Event()
        self.ready = asyncio.Event()
        self.hub: Hub | None = None
        self.mqtt: MqttClient | None = None
        self.cloud: CloudAgent | None = None
        self.voice: VoiceService | None = None
        self.alerts: AlertService | None = None
        self.services: OperatorServices | None = None
        self.gov: GovDesk | None = None
        self.logins: DeviceLogins | None = None
        #: 0 after a normal stop; non-zero when the operator asked for a restart (systemd's
        #: Restart=on-failure brings the daemon back).
        self.exit_code = 0

    def stop(self) -> None:
        self._stop.set()

    def restart(self) -> None:
        log.warning("restart requested by the operator")
        self.exit_code = EXIT_RESTART
        self._stop.set()

    def _open_http(self) -> list[socket.socket]:
        """The LAN HTTP server's listening sockets: by default (`lan:PORT`) one per LAN address
        and one on 127.0.0.1 for the box's own screen; never the operator's side."""
        if not self.settings.http.enabled:
            return []
        # An inherited socket (`--http-fd`: the demo's, opened on the host) serves as well as,
        # and after, the configured ones: what the daemon announces is what the LAN reaches.
        inherited = [self._http_socket] if self._http_socket is not None else []
        host, port = parse_host_port(self.settings.http.listen)
        hosts = [host]
        if host == "lan":
            try:
                lan = resolve_interfaces(self.settings.discovery.interfaces)
            except GatewayError as exc:
                log.warning("LAN HTTP on 127.0.0.1 only: %s", exc)
                lan = []
            hosts = list(dict.fromkeys(["127.0.0.1", *lan]))
        socks: list[socket.socket] = []
        try:
            for h in hosts:
                socks.append(bind(h, port))
                port = port or socks[0].getsockname()[1]  # port 0: the same free port everywhere
        except OSError as exc:
            for sock in socks:
                sock.close()
            raise GatewayError(
                f"cannot listen on {h}:{port}: {exc.strerror} (set http.listen or --http to a free HOST:PORT)"
            ) from exc
        return socks + inherited

    def _allowed_hosts(self, socks: list[socket.socket]) -> set[str]:
        """What a request may name in `Host`: the addresses we listen on (all of this box's
        for a wildcard), `<id>.local` as we announce it, and the configured names."""
        names = {f"{re.sub(r'[^a-z0-9-]', '-', self.settings.id.lower())}.local"}
        names.update(self.settings.http.allowed_hosts)
        for sock in socks:
            host = sock.getsockname()[0]
            if ipaddress.ip_address(host).is_unspecified:
                names.update(
                    str(ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip)
                    for adapter in ifaddr.get_adapters()
                    for ip in adapter.ips
                )
            else:
                names.add(host)
        return names

    async def run(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, self.stop)
            loop.add_signal_handler(signal.SIGINT, self.stop)
        try:
            s.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        except OSError as exc:
            raise GatewayError(f"cannot create state directory {s.state_dir}: {exc.strerror}") from exc
        http_socks = self._open_http()
        try:
            async with Registry(s.state_dir, synchronous=s.registry.synchronous) as registry:
                await self._run(registry, http_socks)
        finally:
            for sock in http_socks:
                sock.close()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)

    async def _run(self, registry: Registry, http_socks: list[socket.socket]) -> None:
        s = self.settings
        bus = Bus()
        hub = Hub(
            registry,
            bus,
            auto_approve=s.discovery.auto_approve,
            flush_interval_s=s.registry.flush_interval_s,
            limits=s.lan,
        )
        await hub.load()
        status_topic, offline = status_will(s.id)
        mqtt = MqttClient(
            host=s.mqtt.host,
            port=s.mqtt.port,
            client_id=s.mqtt_client_id,
            username=s.mqtt.username,
            password=await asyncio.to_thread(broker_password, s),
            keepalive_s=s.mqtt.keepalive_s,
            connect_timeout_s=s.mqtt.connect_timeout_s,
            reconnect_min_s=s.mqtt.reconnect_min_s,
            reconnect_max_s=s.mqtt.reconnect_max_s,
            will=Will(status_topic, offline),
            name="local-mqtt",
        )
        self.hub, self.mqtt = hub, mqtt
        contract = MqttContract(
            hub,
            mqtt,
            gateway_id=s.id,
            state_qos=s.mqtt.state_qos,
            ha_enabled=s.homeassistant.enabled,
            ha_prefix=s.homeassistant.discovery_prefix,
            ha_status_topic=s.homeassistant.status_topic,
        )
        contract.attach()
        logins = await asyncio.to_thread(
            DeviceLogins,
            mqtt,
            s.state_dir,
            enabled=s.mqtt.device_logins,
            gateway_id=s.id,
            tasmota_prefix=s.tasmota.discovery_prefix,
        )
        self.logins = logins
        adapters: list[Adapter] = []
        if s.tasmota.enabled:
            tasmota = TasmotaAdapter(
                mqtt,
                hub,
                discovery_prefix=s.tasmota.discovery_prefix,
                limits=s.lan,
                topic_of_login=logins.topic_of_login,
            )
            logins.on_removed.append(lambda login: tasmota.offline(login.mac) if login.mac else None)
            adapters.append(tasmota)
        if s.zigbee2mqtt.enabled:
            adapters.append(Zigbee2MqttAdapter(mqtt, hub, base_topic=s.zigbee2mqtt.base_topic, limits=s.lan))
        lan = self._lan_discovery(hub, http_socks[0] if http_socks else None)
        adapters.extend(lan.adapters)
        for adapter in adapters:
            hub.add_adapter(adapter)
        alerts = AlertService(
            hub,
            registry,
            gateway_id=s.id,
            policy=AlertPolicy(
                language=s.alerts.language,
                drills=s.alerts.drills,
                default_expiry=timedelta(hours=s.alerts.default_expiry_h),
                repeat_interval_s=s.alerts.repeat_interval_s,
                repeat_count=s.alerts.repeat_count,
            ),
        )
        await alerts.load()
        alerts.attach()
        self.alerts = alerts
        voice = VoiceService(hub, alerts=alerts)
        voice.attach()
        self.voice = voice

        http_ready = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []
        async with contextlib.AsyncExitStack() as stack, asyncio.TaskGroup() as tg:
            agent = await self._cloud_agent(stack, hub, bus)
            await self._services(stack, agent)
            if agent is not None:
                self._link_alerts(agent, alerts)
                tasks.append(tg.create_task(agent.run(), name="cloud"))
            tasks.append(tg.create_task(alerts.run(), name="alerts"))
            tasks.append(tg.create_task(mqtt.run(), name="mqtt-local"))
            tasks.append(tg.create_task(hub.run(), name="registry-writer"))
            tasks.append(tg.create_task(contract.run(), name="commands"))
            for adapter in adapters:
                name = f"adapter-{adapter.protocol}"
                tasks.append(tg.create_task(_supervised(name, adapter.run), name=name))
            if lan.mdns is not None:
                tasks.append(tg.create_task(_supervised("mdns", lan.mdns.run), name="mdns"))
            tasks.append(tg.create_task(voice.run(), name="voice"))
            if http_socks:
                app = await self._web_app(hub, mqtt, alerts, agent, http_socks, lan)
                tasks.append(tg.create_task(serve(app, *http_socks, ready=http_ready), name="http"))
            tasks.append(tg.create_task(self._notifier.watchdog(s.watchdog_fraction), name="watchdog"))
            await self._announce_ready(mqtt, http_socks, http_ready, hub)
            await self._stop.wait()
            log.info("stopping")
            self._notifier.stopping()
            await mqtt.close(final=[(status_topic, offline, True)])
            if agent is not None:
                await agent.close()
            for task in tasks:
                task.cancel()
        contract.detach()
        logins.close()
        log.info("stopped")

    async def _web_app(
        self,
        hub: Hub,
        mqtt: MqttClient,
        alerts: AlertService,
        agent: CloudAgent | None,
        socks: list[socket.socket],
        lan: _Lan,
    ) -> FastAPI:
        """The LAN API, the TV menu at `/` and household pairing."""
        s = self.settings
        pairing = await asyncio.to_thread(
            Pairing,
            s.state_dir,
            pin_lifetime_s=s.http.pin_lifetime_s,
            show_pin_on_screens=s.http.show_pin_on_screens,
        )

        def details() -> dict[str, Any]:
            out: dict[str, Any] = {"local_mqtt": asdict(mqtt.stats), "bus_dropped": hub.bus.dropped}
            if agent is not None:
                out["cloud"] = asdict(agent.stats)
            if lan.mdns is not None:
                out["mdns"] = asdict(lan.mdns.stats)
            return out

        ctx = WebContext(
            hub,
            gateway_id=s.id,
            admin_token=await asyncio.to_thread(load_admin_token, s.state_dir),
            mqtt_connected=lambda: mqtt.connected,
            household=pairing.name_of,
            allowed_hosts=await asyncio.to_thread(self._allowed_hosts, socks),
            health=details,
        )
        if agent is not None:
            agent.diagnostics_extra = lambda: {"http_refused": dict(ctx.http_drops)}
        menu = tvmenu_router(
            ctx,
            alerts,
            services=self.services,
            region=agent.region if agent is not None else "",
            household=agent.household if agent is not None else "",
            language=s.alerts.language,
            max_streams=s.http.max_streams,
            max_streams_per_client=s.http.max_streams_per_client,
        )
        routers = [menu, pairing_router(pairing, is_screen=ctx.is_screen, refused=ctx.http_drops)]
        if self.logins is not None:
            routers.append(logins_router(self.logins))
        if self.services is not None and self.gov is not None:
            routers += [commerce_router(self.services), govservice_router(self.gov)]
        return create_app(ctx, routers=tuple(routers))

    async def _services(self, stack: contextlib.AsyncExitStack, agent: CloudAgent | None) -> None:
        """Operator services (shop, government, information): pushed definitions cached on the
        box, orders and bookings kept until the cloud answers."""
        services = await stack.enter_async_context(
            OperatorServices(self.settings.state_dir, region=agent.region if agent is not None else "")
        )
        gov = GovDesk(services)
        if agent is not None:
            services.link(agent)
            gov.link(agent)
            await services.resume()
            await gov.resume()
        self.services, self.gov = services, gov
        if self.voice is not None:
            self.voice.services = ShoppingByVoice(services)  # 我要买两箱牛奶, 查看我的订单

    @staticmethod
    def _link_alerts(agent: CloudAgent, alerts: AlertService) -> None:
        """Alerts come down the cloud link; receipts and security events go up it."""

        async def on_alert(envelope: Envelope, topic: str) -> None:
            await alerts.on_cloud_alert(envelope.payload, envelope_id=envelope.id)

        async def receipt(payload: dict[str, Any]) -> None:
            await agent.send("receipt", payload, MessageClass.CRITICAL)

        async def security(reason: str, alert_id: str, detail: str) -> None:
            await agent.send(
                "security",
                {"reason": reason, "type": "alert", "id": alert_id, "detail": detail},
                MessageClass.CRITICAL,
            )

        agent.on("alert", on_alert)
        alerts.set_links(region=agent.region, receipt=receipt, security=security)

    async def _cloud_agent(self, stack: contextlib.AsyncExitStack, hub: Hub, bus: Bus) -> CloudAgent | None:
        """The link to 北方云, when this box is provisioned."""
        s = self.settings
        if not s.cloud.enabled:
            return None
        try:
            identity = await asyncio.to_thread(Identity.load, s.state_dir)
        except NotProvisioned:
            log.info("not provisioned: the cloud link is off (gateway provision --cloud URL --code CODE)")
            return None
        outbox = Outbox(s.state_dir / OUTBOX_FILE, max_messages=s.cloud.outbox_max_messages)
        await stack.enter_async_context(outbox)
        agent = CloudAgent(
            identity,
            outbox,
            hub=hub,
            bus=bus,
            telemetry_interval_s=s.cloud.telemetry_interval_s,
            ack_timeout_s=s.cloud.ack_timeout_s,
            reconnect_max_s=s.cloud.reconnect_max_s,
            on_reboot=self.restart,
            share_voice_transcripts=s.cloud.share_voice_transcripts,
        )
        self.cloud = agent
        return agent

    def _lan_discovery(self, hub: Hub, http_sock: socket.socket | None) -> _Lan:
        """mDNS (operator terminals, third-party devices, our announcement) and CoAP discovery,
        on the configured LAN interfaces only."""
        s = self.settings.discovery
        out = _Lan()
        if not (s.mdns or s.coap):
            return out
        try:
            addresses = resolve_interfaces(s.interfaces)
        except GatewayError as exc:
            log.error("LAN discovery is off: %s", exc)
            return out
        if s.mdns:
            port = http_sock.getsockname()[1] if http_sock is not None and s.announce else 0
            mdns = MdnsDiscovery(
                interfaces=addresses,
                announce={"id": self.settings.id, "version": __version__, "api": "/api/v1"},
                announce_port=port,
                max_txt_bytes=self.settings.lan.max_txt_bytes,
            )
            terminals = TerminalAdapter(
                hub, event_timeout_s=s.terminal_event_timeout_s, limits=self.settings.lan
            )
            third_party = MdnsDeviceAdapter(hub, is_claimed=terminals.claims)
            mdns.add_consumer(TERMINAL_SERVICE, terminals)
            for service_type in third_party.service_types:
                mdns.add_consumer(service_type, third_party)
            out.mdns = mdns
            out.adapters += [terminals, third_party]
        if s.coap:
            out.adapters.append(
                CoapAdapter(
                    hub,
                    interface_addresses=addresses,
                    interval_s=s.coap_interval_s,
                    window_s=s.coap_window_s,
                    observe_timeout_s=s.coap_observe_timeout_s,
                    limits=self.settings.lan,
                )
            )
        return out

    async def _announce_ready(
        self, mqtt: MqttClient, http_socks: list[socket.socket], http_ready: asyncio.Event, hub: Hub
    ) -> None:
        s = self.settings
        with contextlib.suppress(BrokerError):
            await mqtt.wait_connected(s.mqtt.connect_timeout_s)
        if not mqtt.connected:
            log.warning("broker %s not reachable yet; serving anyway and retrying", s.mqtt.url)
        http_url = ""
        if http_socks:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_HTTP_READY_TIMEOUT_S):
                    await http_ready.wait()
            host, port = http_socks[0].getsockname()[:2]
            shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104
            http_url = f"http://{shown}:{port}"
            await asyncio.to_thread(_write_private, s.state_dir / HTTP_URL_FILE, http_url + "\n")
        self.ready.set()
        self._notifier.ready(f"{len(hub.devices())} devices")
        log.info(
            "gateway %s %s ready: mqtt %s (%s), http %s, %d devices, state %s",
            s.id,
            __version__,
            s.mqtt.url,
            "connected" if mqtt.connected else "not connected",
            http_url or "off",
            len(hub.devices()),
            s.state_dir,
        )


def broker_password(settings: Settings) -> str | None:
    """The local broker password: `mqtt.password`, else the first line of `mqtt.password_file`."""
    if settings.mqtt.password is not None:
        return settings.mqtt.password.get_secret_value()
    if settings.mqtt.password_file is None:
        return None
    try:
        return settings.mqtt.password_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise GatewayError(
            f"cannot read mqtt.password_file {settings.mqtt.password_file}: {exc.strerror}"
            " (run `gateway logins init` as root, or fix the file's owner)"
        ) from exc


async def _supervised(name: str, run: Callable[[], Awaitable[None]]) -> None:
    """Run a LAN-facing task for good: if it ever fails (a bug, or input nobody foresaw), log
    it and start it again after a growing pause, instead of taking the daemon down with it."""
    attempt = 0
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        try:
            await run()
            return
        except Exception:
            log.exception("%s failed; restarting it", name)
        attempt = 0 if loop.time() - started > _SUPERVISE_MAX_S else attempt + 1
        await asyncio.sleep(min(_SUPERVISE_MAX_S, 0.5 * 2**attempt))


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    tmp.replace(path)
