"""Command-line words as every command reads them, pd-send, pd-queue and the integrations alike: valid Unicode
(text_args), and the old tools' option forms (legacy_argv). Below cli/ and integrations/, so neither imports the
other; on pd-send's path, so it imports nothing at run time.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict, Iterable, List, Tuple


def text_args(args: List[str]) -> List[str]:
    """Arguments as valid Unicode. Bytes that are not UTF-8 (plugin output in Latin-1, say) reach Python as
    lone surrogates, which cannot be sent; each becomes U+FFFD instead of costing the page."""
    cleaned = []
    for arg in args:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            try:
                arg = arg.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            except UnicodeEncodeError:  # a surrogate no byte decodes to: only a caller in Python can pass one
                arg = "".join("\ufffd" if "\ud800" <= char <= "\udfff" else char for char in arg)
        cleaned.append(arg)
    return cleaned


def legacy_argv(argv: List[str], takes_value: Dict[str, bool], legacy: Tuple[str, ...]) -> List[str]:
    """argv rewritten so that argparse, knowing every option of ours (takes_value: each option string, and
    whether it takes a value), reads it as the old tool's argparse read it, knowing only the old option
    strings (legacy):

    - a long option abbreviated to a prefix that was unique among the old names is written out in full,
      although newer options share the prefix (`--d`: `--description`, not also `--debug`);
    - a value with a space that the old parser took as a value but ours would take for an option, because it
      begins with a newer option (`-k "-q w"` where -q is new), is joined to its option (`-k=-q w`).

    argparse tells options from values by the text alone (a word that reads as an option is never a value), so
    neither rewrite can turn another word into an option or back. Nothing after a bare "--" is touched."""
    expanded: List[str] = []
    for index, arg in enumerate(argv):
        if arg == "--":
            return expanded + argv[index:]
        if arg.startswith("--") and len(arg) > 2:
            name, sep, value = arg.partition("=")
            if len(name) > 2 and name not in takes_value:
                matches = [flag for flag in legacy if flag.startswith(name) and flag.startswith("--")]
                if len(matches) == 1:
                    arg = matches[0] + sep + value
        if (" " in arg and len(arg) > 1 and arg[0] == "-" and expanded and takes_value.get(expanded[-1])
                and _reads_as_option(arg, takes_value) and not _reads_as_option(arg, legacy)):
            expanded[-1] = f"{expanded[-1]}={arg}"
            continue
        expanded.append(arg)
    return expanded


def _reads_as_option(arg: str, flags: Iterable[str]) -> bool:
    """Whether argparse knowing these option strings reads arg, a dash-led word with a space, as an option."""
    if arg[1] == "-":
        name = arg.partition("=")[0]
        return any(flag.startswith(name) for flag in flags)
    return arg[:2] in flags
