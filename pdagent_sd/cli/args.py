"""A small option parser for the hot path: pd-send runs for every alert, and argparse alone costs more than
the rest of the command. One table of options serves both the fast parser and, for --help and for anything
unusual, an argparse parser built from the same table, so the two cannot disagree.

Command lines the old agent accepted keep their meaning. Its parser was argparse, so every form argparse
takes is taken here too: `-i=KEY`, `-iKEY`, `--incident-key=KEY`, clustered flags (`-qk KEY`), and unique
prefixes of long options. Options added since share prefixes with old ones (`--d`: `--description` or
`--debug`); a prefix that was unique among the old tool's options still means that option
(`cmdline.legacy_argv`), so a command line that worked before does not turn into a usage error.
"""

from __future__ import annotations

import sys

from pdagent_sd.cmdline import legacy_argv

TYPE_CHECKING = False

if TYPE_CHECKING:
    import argparse
    from typing import Any, Dict, List, NoReturn, Optional, Sequence, Tuple, Type


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
    def __init__(self, prog: str, description: str, epilog: str, options: Sequence[Option],
                 legacy: Tuple[str, ...] = ()) -> None:
        self.prog = prog
        self.description = description
        self.epilog = epilog
        self.options = options
        self.legacy = legacy  # the old tool's option strings: see legacy_argv
        self.by_flag = {flag: option for option in options for flag in option.flags}
        self.takes_value = {flag: option.kind != "flag" for flag, option in self.by_flag.items()}

    def parse(self, argv: List[str]) -> Args:
        """Parse argv quickly; anything unusual (help, an error, a dash-led value) is handed to argparse."""
        argv = legacy_argv(argv, self.takes_value, self.legacy)
        values = self._fast_parse(argv)
        if values is None:
            return Args(vars(self.argparser().parse_args(argv)))
        return Args(values)

    def _fast_parse(self, argv: List[str]) -> Optional[Dict[str, Any]]:
        """argparse's reading of the common forms, or None to let argparse itself decide (and explain)."""
        values: Dict[str, Any] = {option.dest: option.default for option in self.options}
        values.update({option.dest: [] for option in self.options if option.kind == "append"})
        index = 0
        while index < len(argv):
            arg = argv[index]
            index += 1
            if arg[:1] != "-" or arg == "-" or arg == "--":
                return None  # a positional (none are taken) or the end of options: argparse says what is wrong
            inline: Optional[str]
            if arg[1] == "-":  # --name or --name=value
                name, sep, rest = arg.partition("=")
                option = self.by_flag.get(name)
                inline = rest if sep else None
            else:  # -x, -xVALUE, -x=VALUE, or flags clustered: -qx VALUE, -qxVALUE
                option = self.by_flag.get(arg[:2])
                inline = arg[2:] or None
                if option is not None and inline is not None and inline[0] == "=":
                    inline = inline[1:]  # -x=VALUE; in a cluster (-qx=V), as in argparse, "=" stays in the value
                    if option.kind == "flag":
                        return None
                while option is not None and option.kind == "flag" and inline is not None:
                    values[option.dest] = True
                    option = self.by_flag.get("-" + inline[0])
                    inline = inline[1:] or None
            if option is None:
                return None
            if option.kind == "flag":
                if inline is not None:
                    return None
                values[option.dest] = True
                continue
            if inline is None:
                if index >= len(argv) or argv[index][:1] == "-" and argv[index] != "-":
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

        parser = parser_class()(prog=self.prog, description=self.description, epilog=self.epilog,
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


def parser_class() -> Type[argparse.ArgumentParser]:
    """argparse's parser, its error messages with any word shaped like a routing key masked (`pd-send KEY ...`
    without -k names the key as an unrecognized argument). Made on demand: pd-send imports argparse only then."""
    import argparse

    from pdagent_sd.cli.common import redact

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            super().error(redact(message))

    return Parser


def usage_error(command: Command, message: str) -> int:
    """Report a usage error the way argparse does, exit status 2."""
    from pdagent_sd.cli.common import redact

    command.argparser().print_usage(sys.stderr)
    print(f"{command.prog}: error: {redact(message)}", file=sys.stderr)
    return 2
