"""`firmware-sim`: run one simulator, or a whole household, until SIGTERM or Ctrl-C.

    firmware-sim tasmota --mqtt mqtt://127.0.0.1:1883 [--mac A4CF12B3C4D5] [--topic T]
    firmware-sim zigbee2mqtt --mqtt URL [--base-topic zigbee2mqtt] [--report-interval S]
    firmware-sim household --mqtt URL [--tele-period S]
    firmware-sim fleet --gateways N --cloud URL --token=TOKEN [--region CODE ...]  (fleet.py)
    firmware-sim hostile ATTACK [options]  (hostile.py; `firmware-sim hostile list` lists them)

Logs go to stderr; nothing else is printed but `hostile`'s one JSON report line. SIGTERM and
SIGINT stop cleanly (offline states published, connections closed) with exit status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from firmware_sim._mqtt import DEFAULT_BROKER_URL, BrokerUrlError, parse_mqtt_url
from firmware_sim.fleet import add_fleet_parser, fleet_work
from firmware_sim.hostile import add_hostile_parser, hostile_work
from firmware_sim.household import LIVING_ROOM_PLUG_MAC, run_household
from firmware_sim.tasmota import DEFAULT_TELE_PERIOD_S, TasmotaPlug
from firmware_sim.zigbee2mqtt import (
    DEFAULT_BASE_TOPIC,
    DEFAULT_REPORT_INTERVAL_S,
    Zigbee2MqttBridge,
)

__all__ = ["main"]

_log = logging.getLogger("firmware_sim")

_LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

Work = Callable[[], Coroutine[Any, Any, None]]


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from exc
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="firmware-sim", description="Simulated device firmware for the Beifang gateway."
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level on stderr (default INFO)",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--mqtt", default=DEFAULT_BROKER_URL, metavar="URL",
        help=f"broker URL, mqtt://HOST:PORT (default {DEFAULT_BROKER_URL})",
    )  # fmt: skip
    common.add_argument("--seed", type=int, default=None, help="make the simulation repeatable")
    sub = parser.add_subparsers(dest="kind", required=True, metavar="KIND")

    tasmota = sub.add_parser("tasmota", parents=[common], help="a Tasmota plug with energy monitor")
    tasmota.add_argument("--mac", default=LIVING_ROOM_PLUG_MAC, help="12 hex digits")
    tasmota.add_argument("--topic", default=None, help="Tasmota topic (default tasmota_<MAC6>)")
    tasmota.add_argument(
        "--tele-period", type=_positive_seconds, default=DEFAULT_TELE_PERIOD_S, metavar="S",
        help=f"telemetry period in seconds (default {DEFAULT_TELE_PERIOD_S:g})",
    )  # fmt: skip
    tasmota.add_argument("--friendly-name", default="Tasmota", help="FriendlyName1")
    tasmota.add_argument("--power-w", type=float, default=60.0, help="load when on (W)")

    z2m = sub.add_parser("zigbee2mqtt", parents=[common], help="a Zigbee2MQTT bridge")
    z2m.add_argument("--base-topic", default=DEFAULT_BASE_TOPIC)
    z2m.add_argument(
        "--report-interval", type=_positive_seconds, default=DEFAULT_REPORT_INTERVAL_S,
        metavar="S", help=f"sensor report interval (default {DEFAULT_REPORT_INTERVAL_S:g})",
    )  # fmt: skip

    home = sub.add_parser("household", parents=[common], help="every simulated device of a home")
    home.add_argument(
        "--no-lan", dest="lan", action="store_const", const=False, default=None,
        help="MQTT devices only (the LAN devices need a private network namespace)",
    )  # fmt: skip
    home.add_argument(
        "--tele-period", type=_positive_seconds, default=DEFAULT_TELE_PERIOD_S, metavar="S",
        help=f"reporting period of every device (default {DEFAULT_TELE_PERIOD_S:g})",
    )  # fmt: skip
    add_fleet_parser(sub)
    add_hostile_parser(sub)
    return parser


def _work(args: argparse.Namespace) -> Work:
    """What to run; ValueError for arguments a simulator refuses."""
    if args.kind == "fleet":
        return fleet_work(args)
    if args.kind == "hostile":
        return hostile_work(args)
    url: str = args.mqtt
    if args.kind == "tasmota":
        plug = TasmotaPlug(
            mac=args.mac,
            topic=args.topic,
            friendly_name=args.friendly_name,
            tele_period_s=args.tele_period,
            power_w=args.power_w,
            seed=args.seed,
        )
        return lambda: plug.run(url)
    if args.kind == "zigbee2mqtt":
        bridge = Zigbee2MqttBridge(
            base_topic=args.base_topic, report_interval_s=args.report_interval, seed=args.seed
        )
        return lambda: bridge.run(url)
    seed, tele_period_s, lan = args.seed, args.tele_period, args.lan
    return lambda: run_household(mqtt_url=url, seed=seed, tele_period_s=tele_period_s, lan=lan)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=args.log_level, format=_LOG_FORMAT)
    try:
        if args.kind not in ("fleet", "hostile"):  # a cloud; hostile checks its own targets
            parse_mqtt_url(args.mqtt)
        work = _work(args)
    except (BrokerUrlError, ValueError) as exc:
        parser.error(str(exc))
    return asyncio.run(_run_until_signalled(work))


async def _run_until_signalled(work: Work) -> int:
    """Run `work` until it ends or SIGTERM/SIGINT cancels it (exit status 0)."""
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(work(), name="firmware-sim")
    signals_seen: list[str] = []

    def stop(signame: str) -> None:
        if not signals_seen:
            _log.info("%s received, stopping", signame)
        signals_seen.append(signame)
        task.cancel()

    handled = (signal.SIGTERM, signal.SIGINT)
    for sig in handled:
        loop.add_signal_handler(sig, stop, sig.name)
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if not signals_seen or (current is not None and current.cancelling()):
            raise
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
