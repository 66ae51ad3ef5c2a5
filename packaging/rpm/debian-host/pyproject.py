#!/usr/bin/python3
"""What %pyproject_wheel, %pyproject_install and %pyproject_save_files do on Fedora, for rpmbuild on Debian.

Fedora's pyproject-rpm-macros drive pip; Debian's rpm has no such macros, and Debian's pip and sysconfig
would lay files out the Debian way (/usr/lib/python3/dist-packages). This builds the same wheel with
python3-build (no isolation, so no network) and unpacks it with python3-installer into the buildroot at
Fedora's paths, then writes the file list %pyproject_save_files would write. Used only through
packaging/rpm/debian-host/macros.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
from typing import List, Optional


def wheel(args: argparse.Namespace) -> None:
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--skip-dependency-check", "--wheel",
                    "--outdir", args.outdir, "."], check=True)


def install(args: argparse.Namespace) -> None:
    from installer import install as install_wheel
    from installer.destinations import SchemeDictionaryDestination
    from installer.sources import WheelFile

    wheels = glob.glob(os.path.join(args.wheeldir, "*.whl"))
    if len(wheels) != 1:
        sys.exit(f"pyproject.py: expected one wheel in {args.wheeldir}, found {wheels}")
    scheme = {"purelib": args.sitelib, "platlib": args.sitelib, "scripts": args.bindir, "data": args.prefix,
              "headers": os.path.join(args.prefix, "include")}
    destination = SchemeDictionaryDestination(scheme, interpreter=args.interpreter, script_kind="posix",
                                              destdir=args.destdir, bytecode_optimization_levels=())
    with WheelFile.open(wheels[0]) as source:
        install_wheel(source, destination, {"INSTALLER": b"rpm\n"})


def save_files(args: argparse.Namespace) -> None:
    """The %files lines for the given top-level modules and their .dist-info, as %{pyproject_files}."""
    root = args.destdir + args.sitelib
    lines = []
    for module in args.modules:
        if not os.path.isdir(os.path.join(root, module)):
            sys.exit(f"pyproject.py: module {module} is not in {args.sitelib}")
        lines.append(f"{args.sitelib}/{module}/")
    lines += [f"{args.sitelib}/{os.path.basename(d)}/" for d in sorted(glob.glob(os.path.join(root, "*.dist-info")))]
    with open(args.output, "w") as out:
        out.write("\n".join(lines) + "\n")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("wheel")
    p.add_argument("--outdir", required=True)
    p.set_defaults(run=wheel)
    p = commands.add_parser("install")
    for option in ("--wheeldir", "--destdir", "--sitelib", "--bindir", "--prefix", "--interpreter"):
        p.add_argument(option, required=True)
    p.set_defaults(run=install)
    p = commands.add_parser("save-files")
    for option in ("--destdir", "--sitelib", "--output"):
        p.add_argument(option, required=True)
    p.add_argument("modules", nargs="+")
    p.set_defaults(run=save_files)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
