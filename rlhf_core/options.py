"""The argparse parser of the commands that are not training stages (`rlhf report`, `rlhf data`, `rlhf feedback`).

The training stages parse with ``rlhf.config.parse``, where ``--run_dir`` and ``--run-dir`` are the
same option and a refusal is one line. This parser gives the other commands the same behaviour:
every long option takes both spellings, a misspelt option is an error (never a prefix match), and
an error is one line naming the option, not argparse's usage block.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import typing
from collections.abc import Sequence
from typing import Any


def closest(name: str, known: Sequence[str]) -> str:
    """`` (did you mean 'NAME'?)`` for the known name closest to a misspelt one, or nothing when none is close."""
    match = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def other_spellings(option: str) -> list[str]:
    """``--run-dir`` for ``--run_dir`` and the reverse (both, for a name that mixes them)."""
    body = option[2:]
    return [s for s in dict.fromkeys([f"--{body.replace('-', '_')}", f"--{body.replace('_', '-')}"]) if s != option]


class ArgumentParser(argparse.ArgumentParser):
    """argparse with both spellings of every long option and one-line errors (exit status 2).

    The spelling is settled when parsing (a flag the parser does not know under one spelling is read
    under the other), so options declared anywhere (argument groups, subcommands) take both and
    ``--help`` lists each once.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})  # a misspelt option is an error, not a prefix

    def _spelt(self, token: str) -> str:
        name, equals, value = token.partition("=")
        if name in self._option_string_actions:
            return token
        for other in other_spellings(name):
            if other in self._option_string_actions:
                return other + equals + value
        return token

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        tokens = list(sys.argv[1:] if args is None else args)
        end = tokens.index("--") if "--" in tokens else len(tokens)  # after "--" nothing is an option
        tokens[:end] = [self._spelt(t) if t.startswith("--") else t for t in tokens[:end]]
        return super().parse_known_args(tokens, namespace)

    def error(self, message: str) -> typing.NoReturn:
        print(f"{self.prog}: error: {message}; see {self.prog} --help", file=sys.stderr)
        raise SystemExit(2)
