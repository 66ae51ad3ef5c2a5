"""`make repo`'s repositories for the package tests: a signing key made for the run, build-repo.sh, and a static
HTTP server on the host's loopback that the containers (which share the host's network) reach."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

from debcontainer import REPO

BUILD_REPO = REPO / "packaging" / "build-repo.sh"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@contextmanager
def serve(root: Path) -> Iterator[str]:
    """Serve root on 127.0.0.1 (a free port) until the block ends; yields the base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextmanager
def signing_key(home: Path) -> Iterator[Path]:
    """The stand-in for the project's key: RSA 3072, one day, made in a private GNUPGHOME (0700) for this run
    and deleted afterwards. Its fingerprint is in home/fingerprint."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    home.chmod(0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    try:
        subprocess.run(["gpg", "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", "",
                        "--quick-generate-key", "pdagent-sd test archive key <test@pdagent-sd.invalid>", "rsa3072",
                        "sign", "1d"], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        colons = subprocess.run(["gpg", "--batch", "--with-colons", "--list-secret-keys"], env=env, check=True,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
        (home / "fingerprint").write_text(next(line.split(":")[9] for line in colons.splitlines()
                                               if line.startswith("fpr:")))
        yield home
    finally:
        subprocess.run(["gpgconf", "--kill", "all"], env=env, check=False)
        shutil.rmtree(home, ignore_errors=True)


def build_repo(outdir: Path, url: str, deb: Path, gnupg: Optional[Path] = None,
               rpm: bool = True) -> subprocess.CompletedProcess:
    """build-repo.sh; with gnupg, signed by the key in that GNUPGHOME (as a maintainer would with the real one),
    else by a throwaway key of its own."""
    extra: List[str] = [] if rpm else ["--no-rpm"]
    env = dict(os.environ)
    if gnupg is not None:
        extra += ["--key", (gnupg / "fingerprint").read_text().strip()]
        env["GNUPGHOME"] = str(gnupg)
    done = subprocess.run(["bash", str(BUILD_REPO), "--outdir", str(outdir), "--url", url, "--deb", str(deb), *extra],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout
    return done


Served = Tuple[Path, str]
