"""The export commands' argument parser: every usage error is one line ``error: --flag: message``.

``python -m keras_preact.export`` and ``python -m keras_preact.export.classify`` parse with
:class:`CommandParser`. Plain argparse names a misspelled flag only as "unrecognized
arguments", after the usage block, and reports a missing required flag first; here an unknown
flag is reported before anything else, with the closest known flags as a suggestion (as the
trainers do), and a renamed flag says its new name.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys


class ArgumentError(ValueError):
    """A bad value of one flag (or positional argument); ``flag`` names it."""

    def __init__(self, flag: str, message: str):
        super().__init__(f"{flag}: {message}")
        self.flag = flag


class CommandParser(argparse.ArgumentParser):
    """argparse with one-line errors, suggestions for unknown flags and refused old spellings.

    ``renamed``: ``{old flag: message}`` for flags that no longer exist, e.g.
    ``{"--recipe": "renamed --preprocessing"}``.
    """

    def __init__(self, *args, renamed: dict | None = None, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # a prefix of a flag is a misspelling, not the flag
        super().__init__(*args, **kwargs)
        self.renamed = dict(renamed or {})

    def fail(self, flag: str, message: str):
        """Print ``error: <flag>: <message>`` on one line and exit with status 2."""
        self.exit(2, f"error: {flag}: {' '.join(str(message).split())}\n")

    def error(self, message):
        text = " ".join(str(message).split())
        match = re.match(r"argument ([^:]+): (.*)", text)
        if match:
            self.fail(match.group(1).split("/")[0], match.group(2))
        match = re.match(r"the following arguments are required: (.*)", text)
        if match:
            self.fail(match.group(1).split(",")[0].strip(), "required")
        match = re.match(r"unrecognized arguments: (\S+)", text)
        if match:
            self.fail(match.group(1), "unexpected argument")
        self.exit(2, f"error: {text}\n")

    def known_flags(self) -> list:
        return [s for action in self._actions for s in action.option_strings if s.startswith("--")]

    def check_flag_names(self, argv) -> None:
        """Refuse the first unknown ``--flag`` of ``argv`` (before any other check) with a suggestion."""
        known = self.known_flags()
        for argument in argv:
            if argument == "--":
                return
            if not argument.startswith("--"):
                continue
            flag = argument.split("=", 1)[0]
            if flag in known:
                continue
            if flag in self.renamed:
                self.fail(flag, self.renamed[flag])
            close = difflib.get_close_matches(flag, known, n=2, cutoff=0.6)
            hint = f"did you mean {' or '.join(close)}?" if close else "see --help"
            self.fail(flag, f"unknown flag ({hint})")

    def parse_args(self, args=None, namespace=None):
        argv = list(sys.argv[1:] if args is None else args)
        if not any(a in ("-h", "--help") for a in argv):
            self.check_flag_names(argv)
        return super().parse_args(argv, namespace)
