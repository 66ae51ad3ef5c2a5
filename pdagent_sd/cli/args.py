"""A small option parser for the hot path: pd-send runs for every alert, and argparse alone costs more than
the rest of the command. One table of options serves both the fast parser and, for --help and for usage
errors only, an argparse parser built from the same table, so the two cannot disagree.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False

if TYPE_CHECKING:
    import argparse
    from typing import Any, Dict, List, Optional, Sequence, Tuple


class Option:
    """One option. kind: "value" takes an argument, "flag" is a switch, "append" is a repeatable value."""

    __slots__ = ("flags", "dest", "kind", "help", "metavar", "choices", "default", "required")

    def __init__(self, flags: Tuple[str, ...], dest: str, kind: str = "value", help: str = "",
                 metavar: Optional[str] = None, choices: Optional[Tuple[str, ...]] = None,
                 default: Any = None, required: bool = False) -> None:
        self.flags = flags
        self.dest = dest
        self.kind = kind
        self.help = help
        self.metavar = metavar
        self.choices = choices
        self.default = [] if kind == "append" else (False if kind == "flag" else default)
        self.required = required


class Args:
    """The parsed options, as attributes."""

    def __init__(self, values: Dict[str, Any]) -> None:
        self.__dict__.update(values)

    def __getattr__(self, name: str) -> Any:  # only reached for a name no option defines
        raise AttributeError(name)


class Command:
    def __init__(self, prog: str, description: str, epilog: str, options: Sequence[Option]) -> None:
        self.prog = prog
        self.description = description
        self.epilog = epilog
        self.options = options
        self.by_flag = {flag: option for option in options for flag in option.flags}

    def parse(self, argv: List[str]) -> Args:
        """Parse argv quickly; anything unusual (help, an error) is handed to argparse, which explains it."""
        values = self._fast_parse(argv)
        if values is None:
            return Args(vars(self.argparser().parse_args(argv)))
        return Args(values)

    def _fast_parse(self, argv: List[str]) -> Optional[Dict[str, Any]]:
        values: Dict[str, Any] = {option.dest: option.default for option in self.options}
        values.update({option.dest: [] for option in self.options if option.kind == "append"})
        index = 0
        while index < len(argv):
            arg = argv[index]
            index += 1
            flag, inline = arg, None
            if arg.startswith("--") and "=" in arg:
                flag, inline = arg.split("=", 1)
            elif arg.startswith("-") and not arg.startswith("--") and len(arg) > 2:
                flag, inline = arg[:2], arg[2:]
            option = self.by_flag.get(flag)
            if option is None or flag in ("-h", "--help"):
                return None
            if option.kind == "flag":
                if inline is not None:
                    return None
                values[option.dest] = True
                continue
            if inline is None:
                if index >= len(argv) or argv[index].startswith("-") and argv[index] != "-":
                    return None  # argparse decides what a dash-led value means, and says so
                inline = argv[index]
                index += 1
            if option.choices and inline not in option.choices:
                return None
            if option.kind == "append":
                values[option.dest].append(inline)
            else:
                values[option.dest] = inline
        if any(option.required and values[option.dest] is None for option in self.options):
            return None
        return values

    def argparser(self) -> argparse.ArgumentParser:
        import argparse

        parser = argparse.ArgumentParser(prog=self.prog, description=self.description, epilog=self.epilog,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        for option in self.options:
            keywords: Dict[str, Any] = {"dest": option.dest, "help": option.help}
            if option.kind == "flag":
                keywords["action"] = "store_true"
            else:
                keywords.update(metavar=option.metavar, choices=option.choices, default=option.default,
                                required=option.required)
                if option.kind == "append":
                    keywords["action"] = "append"
            parser.add_argument(*option.flags, **keywords)
        return parser


def usage_error(command: Command, message: str) -> int:
    """Report a usage error the way argparse does, exit status 2."""
    command.argparser().print_usage(sys.stderr)
    print(f"{command.prog}: error: {message}", file=sys.stderr)
    return 2
