"""Command-line value checks shared by ``videogpt-fast`` and ``videogpt-fast train``.

Each ``type=`` function raises ``argparse.ArgumentTypeError``, so argparse reports a bad value as
``prog: error: argument --fps: must be a positive integer, got 0`` and exits with status 2 before
any work starts. :func:`check_output_path` validates an output file the same way up front.
"""
from __future__ import annotations

import argparse
import copy
import os
import re
from pathlib import Path
from typing import Sequence


def _number(kind, text: str, what: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _number(int, text, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def nonneg_int(text: str) -> int:
    """An integer >= 0."""
    value = _number(int, text, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
    return value


def seed_int(text: str) -> int:
    """A random seed: an integer in [0, 2**32 - 1] (what NumPy's and torch's seeding both take)."""
    value = _number(int, text, "an integer in [0, 2**32 - 1]")
    if not 0 <= value < 2 ** 32:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**32 - 1], got {value}")
    return value


def device_name(text: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (whether CUDA is there is checked when it is used)."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N, got {text!r}")
    return text


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _number(float, text, "a positive number")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def nonneg_float(text: str) -> float:
    """A finite number >= 0."""
    value = _number(float, text, "a number >= 0")
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def check_output_path(path: str, extensions: Sequence[str], flag: str = "--output") -> Path:
    """``path`` as a Path when it can be written: its extension is one of ``extensions`` and its
    folder (or the nearest existing parent, when the folder is still to be created) is a writable
    folder. Raises ValueError naming ``flag``, the path and the supported extensions otherwise."""
    out = Path(path)
    if out.is_dir():
        raise ValueError(f"{flag} {path} is a folder; give a file name ending in {', '.join(extensions)}")
    ext = out.suffix.lower()
    if ext not in extensions:
        raise ValueError(f"{flag} {path}: unsupported extension {ext or '(none)'!r}; supported: "
                         f"{', '.join(extensions)}")
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{flag} {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: folder {parent} is not writable")
    return out


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``-h`` shows each flag's default, except where its help already says it, for switches and
    required flags, and where the default is None (nothing to show)."""

    def _format_action(self, action: argparse.Action) -> str:
        if action.help is None and action.option_strings and action.default is not None \
                and action.default is not False and action.default is not argparse.SUPPRESS:
            action = copy.copy(action)  # a flag without help still shows its default
            action.help = "default: %(default)s"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text.lower() or action.required or action.default is None
                or action.default is False
                or action.default is argparse.SUPPRESS or isinstance(action, argparse._HelpAction)):
            return text
        return super()._get_help_string(action)
