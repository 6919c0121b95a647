"""A private network for the demo and the tests: a new user + network namespace.

`python -m gateway.netns -- CMD ...` runs CMD in a fresh namespace (no root needed) with only
`lo`, brought up with multicast on and routes for 224.0.0.0/4 and ff00::/8, so mDNS and CoAP
multicast work between processes on 127.0.0.x while nothing can reach a host interface.
Every device simulator takes its own address from 127.0.0.0/8 (all of it is local on `lo`).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence

from gateway.errors import GatewayError

__all__ = ["ENV_MARK", "enter_command", "in_private_netns", "prepare_loopback"]

#: Set inside a namespace made by this module.
ENV_MARK = "BFY_PRIVATE_NETNS"


def in_private_netns() -> bool:
    """True when this process sees only `lo` (a namespace of ours, or one like it)."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def _ip(*args: str) -> None:
    ip = shutil.which("ip") or "/usr/sbin/ip"
    out = subprocess.run([ip, *args], capture_output=True, text=True, check=False)
    if out.returncode != 0 and "File exists" not in out.stderr:
        raise GatewayError(f"ip {' '.join(args)} failed: {out.stderr.strip()}")


def prepare_loopback() -> None:
    """Inside the namespace: `lo` up, multicast on, multicast routes to `lo`."""
    if not in_private_netns():
        raise GatewayError("refusing to change routes outside a private network namespace")
    _ip("link", "set", "lo", "up")
    _ip("link", "set", "lo", "multicast", "on")
    _ip("route", "add", "224.0.0.0/4", "dev", "lo")
    _ip("-6", "route", "add", "ff00::/8", "dev", "lo", "table", "local")


def enter_command(argv: Sequence[str]) -> list[str]:
    """The command line that runs `argv` inside a new private namespace."""
    unshare = shutil.which("unshare") or "/usr/bin/unshare"
    return [
        unshare,
        "--user",
        "--map-root-user",
        "--net",
        "--",
        sys.executable,
        "-m",
        "gateway.netns",
        "--inside",
        "--",
        *argv,
    ]


def main(args: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if args is None else args)
    inside = bool(args) and args[0] == "--inside"
    if inside:
        args = args[1:]
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print("usage: python -m gateway.netns -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    if not inside:
        os.execv(enter_command(args)[0], enter_command(args))
    try:
        prepare_loopback()
    except GatewayError as exc:
        print(f"netns: {exc}", file=sys.stderr)
        return 1
    os.environ[ENV_MARK] = "1"
    os.execvp(args[0], args)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
