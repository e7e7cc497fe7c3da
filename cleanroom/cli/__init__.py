"""The `cleanroom` command line, built on the SDK (`cleanroom.Client`)."""

from cleanroom.cli.base import main

__all__ = ["main"]
