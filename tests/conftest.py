"""Shared fixtures: a private Mosquitto per test, and checks that nothing leaks."""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway.broker import PrivateBroker
from gateway.netns import in_private_netns

FIXTURES = Path(__file__).parent / "fixtures"


def _children() -> set[int]:
    pids: set[int] = set()
    task_dir = Path(f"/proc/{os.getpid()}/task")
    for task in task_dir.iterdir():
        try:
            text = (task / "children").read_text()
        except OSError:
            continue
        pids.update(int(p) for p in text.split())
    return pids


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail a test that leaves a child process or a non-daemon thread behind."""
    before_children = _children()
    before_threads = set(threading.enumerate())
    yield
    leaked = _children() - before_children
    alive = []
    for pid in leaked:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    assert not alive, f"test left child processes running: {alive}"
    threads = [
        t
        for t in set(threading.enumerate()) - before_threads
        if t.is_alive() and not t.daemon and not t.name.startswith("asyncio_")
    ]
    for t in threads:  # a worker told to stop (aiosqlite's, after close()) may still be returning
        t.join(timeout=2.0)
    threads = [t for t in threads if t.is_alive()]
    assert not threads, f"test left threads running: {threads}"


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[PrivateBroker]:
    async with PrivateBroker(workdir=tmp_path / "broker") as b:
        yield b


@pytest.fixture(autouse=True)
def _netns_guard(request: pytest.FixtureRequest) -> None:
    """Multicast tests run only inside a private namespace, never on host interfaces."""
    if request.node.get_closest_marker("netns") and not in_private_netns():
        pytest.fail(
            "this test sends multicast and must run in the private namespace: use ./scripts/test, "
            "or .venv/bin/python -m gateway.netns -- .venv/bin/python -m pytest ..."
        )
