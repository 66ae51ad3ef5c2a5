"""A throwaway test CA and a server certificate for 127.0.0.1 / localhost, made with the openssl command line.

Tests use it to serve the Events API stand-in over https and to prove that clients verify it::

    ca = make_test_ca(tmp_path)
    with StandIn(certfile=ca.server_cert, keyfile=ca.server_key) as api:
        requests.post(api.endpoint(), json=event, verify=ca.ca_cert)

The extensions are written out explicitly (not taken from the system's openssl.cnf) because Python 3.13
verifies with VERIFY_X509_STRICT: the CA needs keyUsage and a critical basicConstraints, and both
certificates need key identifiers, or verification fails for reasons that have nothing to do with the test.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import List, NamedTuple, Union

CA_EXTENSIONS = """\
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""

SERVER_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""

# EC keys: generated in milliseconds, where RSA would make every TLS test noticeably slower
NEW_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


class CAFiles(NamedTuple):
    ca_cert: str
    server_cert: str
    server_key: str


def _openssl(args: List[str], cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def make_test_ca(directory: Union[str, Path], days: int = 2) -> CAFiles:
    """Create ca.pem, server.pem and server.key in directory (the CA's own key stays there too, unused)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "ca.cnf").write_text(CA_EXTENSIONS)
    (d / "server.ext").write_text(SERVER_EXTENSIONS)
    _openssl(["req", "-x509", *NEW_KEY, "-keyout", "ca.key", "-out", "ca.pem", "-days", str(days),
              "-subj", "/CN=pdagent-sd throwaway test CA", "-config", "ca.cnf", "-extensions", "ca"], d)
    _openssl(["req", "-new", *NEW_KEY, "-keyout", "server.key", "-out", "server.csr",
              "-subj", "/CN=localhost", "-config", "ca.cnf"], d)
    _openssl(["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
              "-out", "server.pem", "-days", str(days), "-extfile", "server.ext"], d)
    return CAFiles(str(d / "ca.pem"), str(d / "server.pem"), str(d / "server.key"))
