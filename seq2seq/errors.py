"""Errors a user can cause, and the one-line, exit-status-2 way they end a command."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable


class UserError(Exception):
    """A problem with the user's input (a path, a flag, a file's content), reported in one sentence."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage dump) with exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def exits_cleanly(main: Callable[..., None]) -> Callable[..., None]:
    """Wrap a command's main() so a UserError prints 'error: ...' on stderr and exits 2, no traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper


def positive(kind: type) -> Callable[[str], int | float]:
    """argparse type for a number > 0."""

    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def probability(text: str) -> float:
    """argparse type for a dropout probability in [0, 1)."""
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value
