"""A gateway's cloud link as a process, for kill -9 tests: the real CloudAgent and Outbox on a
provisioned state directory, accepting a stream of events and printing each one it accepted.

    python -m tests.fault_agent STATE_DIR RUN [--devices N] [--count N]

Event i of run R goes up as type `event` with payload {"device": "d<i mod N>", "seq": i,
"run": R}; `accepted R i` is printed (and flushed) once `send` returned, i.e. once it is on
disk. The test kills this process at random moments and checks the cloud got every accepted
event exactly once, in order per device.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from cloud_bridge.agent import CloudAgent
from cloud_bridge.identity import Identity
from cloud_bridge.outbox import MessageClass, Outbox
from gateway.daemon import OUTBOX_FILE


async def _main(state_dir: Path, run: int, devices: int, count: int | None) -> None:
    identity = Identity.load(state_dir)
    async with Outbox(state_dir / OUTBOX_FILE) as outbox:
        agent = CloudAgent(identity, outbox, ack_timeout_s=3.0, reconnect_max_s=0.5, connect_timeout_s=5.0)
        link = asyncio.create_task(agent.run(), name="agent")

        async def device(d: int) -> None:
            i = d
            while count is None or i < count:
                await agent.send("event", {"device": f"d{d}", "seq": i, "run": run}, MessageClass.EVENT)
                sys.stdout.write(f"accepted {run} {i}\n")
                i += devices

        await asyncio.gather(*(device(d) for d in range(devices)))
        sys.stdout.write("all accepted\n")
        sys.stdout.flush()
        await link  # until killed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("state_dir", type=Path)
    parser.add_argument("run", type=int)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--count", type=int)
    args = parser.parse_args()
    # Flush accepted lines promptly: the test reads them as they come.
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    asyncio.run(_main(args.state_dir, args.run, args.devices, args.count))


if __name__ == "__main__":
    main()
