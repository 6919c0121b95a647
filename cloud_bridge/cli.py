"""`cloud` command line (the reference cloud). Commands arrive with the cloud-bridge work."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from gateway import __version__

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cloud", description="北方云 reference cloud (operator side)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.parse_args(argv)
    parser.print_help()
    return 0
