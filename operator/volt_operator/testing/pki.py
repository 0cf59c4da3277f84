"""A throwaway certificate authority for the local control plane.

Uses the `openssl` command line tool (present on every Debian/Ubuntu image)
so the test harness needs no extra Python dependency. Every certificate is
signed by one CA that the API server trusts as `--client-ca-file`; a client's
Kubernetes identity is its certificate's CN (user) and O fields (groups).
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

# Names end up inside an openssl `-subj` string, where '/', '=' and '\' are syntax.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9:._@-]+$")

_CA_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = volt-local-ca
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
"""


@dataclass(frozen=True)
class KeyPair:
    """Paths of a PEM certificate and its private key."""

    cert: Path
    key: Path


def _openssl(*args: str) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise RuntimeError("the local cluster needs the `openssl` command (apt-get install openssl)")
    result = subprocess.run([exe, *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def _ec_key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path))
    path.chmod(0o600)


def _check_name(what: str, value: str) -> None:
    if not _SAFE_NAME.match(value):
        raise ValueError(f"{what} {value!r} may only contain letters, digits and ':._@-'")


class CertificateAuthority:
    """A CA under `directory` (ca.crt, ca.key) that issues client and serving certificates."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.cert = self.directory / "ca.crt"
        self.key = self.directory / "ca.key"
        if not (self.cert.is_file() and self.key.is_file()):
            raise FileNotFoundError(f"no CA in {self.directory}: call CertificateAuthority.create()")

    @classmethod
    def create(cls, directory: Path) -> "CertificateAuthority":
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "ca.cnf"
        config.write_text(_CA_CONFIG)
        _ec_key(directory / "ca.key")
        _openssl("req", "-x509", "-new", "-config", str(config), "-extensions", "ca",
                 "-key", str(directory / "ca.key"), "-days", "3650", "-sha256",
                 "-out", str(directory / "ca.crt"))
        return cls(directory)

    def issue(
        self,
        name: str,
        common_name: str,
        organizations: Sequence[str] = (),
        *,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
        server: bool = False,
    ) -> KeyPair:
        """Issue `<name>.crt`/`<name>.key`; a client certificate, or a serving one if `server`."""
        _check_name("name", name)
        _check_name("common_name", common_name)
        for org in organizations:
            _check_name("organization", org)
        key = self.directory / f"{name}.key"
        cert = self.directory / f"{name}.crt"
        config = self.directory / f"{name}.cnf"
        lines = ["[req]", "distinguished_name = dn", "[dn]", "[leaf]",
                 "basicConstraints = critical,CA:FALSE",
                 "keyUsage = critical,digitalSignature,keyEncipherment",
                 "extendedKeyUsage = " + ("serverAuth,clientAuth" if server else "clientAuth")]
        sans = [f"DNS:{d}" for d in dns_names] + [f"IP:{ip}" for ip in ip_addresses]
        if sans:
            lines.append("subjectAltName = " + ",".join(sans))
        config.write_text("\n".join(lines) + "\n")
        subject = "".join(f"/O={org}" for org in organizations) + f"/CN={common_name}"
        # One openssl run: new key, request and CA signature (-CA implies -x509).
        _openssl("req", "-new", "-config", str(config), "-extensions", "leaf",
                 "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-noenc", "-keyout", str(key),
                 "-subj", subject, "-CA", str(self.cert), "-CAkey", str(self.key),
                 "-set_serial", str(secrets.randbits(63)), "-days", "365", "-sha256", "-out", str(cert))
        key.chmod(0o600)
        config.unlink()
        return KeyPair(cert=cert, key=key)


def create_signing_key(private: Path, public: Path) -> None:
    """An RSA key pair for signing service-account tokens (RS256, what every client expects)."""
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(private))
    private.chmod(0o600)
    _openssl("pkey", "-in", str(private), "-pubout", "-out", str(public))
