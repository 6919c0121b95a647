"""gateway.mqtt against a real Mosquitto: delivery, reconnect, will, bulk reads."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import subprocess

import paho.mqtt.client as paho
import pytest

from gateway.broker import PrivateBroker
from gateway.errors import BrokerError
from gateway.mqtt import Message, MqttClient, Will, _PahoClient
from tests.helpers import Watcher


def client(broker: PrivateBroker, name: str, **kw: object) -> MqttClient:
    return MqttClient(host=broker.host, port=broker.port, client_id=name, name=name, **kw)  # type: ignore[arg-type]


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._changed = asyncio.Event()

    def __call__(self, msg: Message) -> None:
        self.messages.append(msg)
        self._changed.set()

    async def wait_for(self, predicate: object, timeout: float = 5.0) -> Message:
        assert callable(predicate)
        async with asyncio.timeout(timeout):
            while True:
                for m in self.messages:
                    if predicate(m):
                        return m
                self._changed.clear()
                await self._changed.wait()


async def test_publish_subscribe_and_acked_publish(broker: PrivateBroker) -> None:
    c = client(broker, "t-pubsub")
    inbox = Inbox()
    c.subscribe("t/#", inbox)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(c.run())
        await c.wait_connected(5)
        await c.publish_acked("t/retained", "保留", retain=True)
        c.publish("t/plain", b"x")
        got = await inbox.wait_for(lambda m: m.topic == "t/plain")
        assert got.payload == b"x" and not got.retain
        await c.close()
        task.cancel()
    # The retained message is really on the broker: a fresh client gets it.
    out = subprocess.run(
        ["mosquitto_sub", "-p", str(broker.port), "-t", "t/retained", "-C", "1", "-W", "5"],
        capture_output=True, check=True, timeout=10,
    )  # fmt: skip
    assert out.stdout.decode().strip() == "保留"


async def test_bulk_messages_are_all_delivered_in_order(broker: PrivateBroker) -> None:
    """Thousands of messages arrive in one read; the buffered socket must not lose or reorder any."""
    c = client(broker, "t-bulk")
    got: list[bytes] = []
    done = asyncio.Event()
    n = 5000

    def on(msg: Message) -> None:
        got.append(msg.payload)
        if len(got) == n:
            done.set()

    c.subscribe("bulk", on)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(c.run())
        await c.wait_connected(5)
        lines = b"".join(b"%d\n" % i for i in range(n))
        proc = await asyncio.create_subprocess_exec(
            "mosquitto_pub", "-p", str(broker.port), "-t", "bulk", "-l", stdin=subprocess.PIPE
        )
        await proc.communicate(lines)
        async with asyncio.timeout(20):
            await done.wait()
        assert got == [b"%d" % i for i in range(n)]
        await c.close()
        task.cancel()


async def test_reconnects_and_restores_subscriptions_after_broker_restart(
    broker: PrivateBroker,
) -> None:
    c = client(broker, "t-reconnect", reconnect_max_s=0.5)
    inbox = Inbox()
    connects = []
    c.subscribe("after/restart", inbox)
    c.on_connect(lambda: connects.append(1))
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(c.run())
        await c.wait_connected(5)
        await broker.kill()
        async with asyncio.timeout(5):
            while c.connected:
                await asyncio.sleep(0.01)
        assert not c.publish("x", b"dropped")  # QoS 0 while offline is dropped, and counted
        assert c.stats.dropped_offline == 1
        await broker.start()
        await c.wait_connected(5)
        assert len(connects) == 2
        subprocess.run(
            ["mosquitto_pub", "-p", str(broker.port), "-t", "after/restart", "-m", "hi"], check=True
        )
        await inbox.wait_for(lambda m: m.payload == b"hi")
        await c.close()
        task.cancel()
    assert c.stats.connects == 2 and c.stats.disconnects >= 1


async def test_last_will_on_unclean_loss_and_final_messages_on_close(broker: PrivateBroker) -> None:
    watcher = client(broker, "t-watcher")
    inbox = Inbox()
    watcher.subscribe("gw/status", inbox)
    victim = client(broker, "t-victim", will=Will("gw/status", b"offline"), keepalive_s=5)
    async with asyncio.TaskGroup() as tg:
        wt = tg.create_task(watcher.run())
        vt = tg.create_task(victim.run())
        await watcher.wait_connected(5)
        await victim.wait_connected(5)
        victim.publish("gw/status", b"online", qos=1, retain=True)
        await inbox.wait_for(lambda m: m.payload == b"online")
        await victim.close(final=[("gw/status", b"bye", True)])
        await inbox.wait_for(lambda m: m.payload == b"bye")
        vt.cancel()
        await watcher.close()
        wt.cancel()


async def test_a_failing_handler_does_not_break_the_connection(broker: PrivateBroker) -> None:
    c = client(broker, "t-handler")
    inbox = Inbox()

    def broken(msg: Message) -> None:
        raise RuntimeError("bug in a handler")

    c.subscribe("h/bad", broken)
    c.subscribe("h/good", inbox)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(c.run())
        await c.wait_connected(5)
        c.publish("h/bad", b"1")
        c.publish("h/good", b"2")
        await inbox.wait_for(lambda m: m.payload == b"2")
        assert c.stats.handler_errors == 1 and c.connected
        await c.close()
        task.cancel()


def test_paho_still_has_the_hook_we_override() -> None:
    """We override paho's private `_create_socket` to buffer reads; fail loudly if it changes."""
    assert inspect.signature(paho.Client._create_socket).parameters.keys() == {"self"}
    assert _PahoClient._create_socket is not paho.Client._create_socket


@pytest.mark.parametrize("resend", [True, False])
async def test_unacknowledged_publishes_after_a_crash_are_resent_only_when_asked(
    broker: PrivateBroker, resend: bool
) -> None:
    """A broker that dies before its PUBACK: paho resends the publish first thing on the next
    connection, unless `resend_unacked=False` (the cloud agent, whose outbox decides the order)."""
    c = client(broker, f"t-resend-{resend}", clean_session=False, resend_unacked=resend,
               reconnect_min_s=1.0, reconnect_max_s=1.0)  # fmt: skip
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(c.run())
        await c.wait_connected(5)
        assert broker.pid is not None
        os.kill(broker.pid, signal.SIGSTOP)  # frozen: no PUBACK will come
        stale = c.publish_future("t/order", b"stale")
        await broker.kill()
        if resend:
            assert not stale.done()  # still in paho's queue, to be sent again
        else:
            with pytest.raises(BrokerError):
                await stale
        await broker.start()
        async with Watcher(broker, "t/order", name="t-resend-watcher") as seen:
            await c.wait_connected(10)  # our client comes back after the watcher subscribed
            await c.publish_acked("t/order", b"marker")
            await seen.wait(lambda: b"marker" in [m.payload for m in seen.messages], what="the marker")
            assert [m.payload for m in seen.messages] == ([b"stale", b"marker"] if resend else [b"marker"])
        await c.close()
        task.cancel()
