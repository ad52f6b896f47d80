"""A real mosquitto broker for tests: its own port, config, TLS, passwords, ACLs, kill/restart.

Use the ``mosquitto`` fixture of tests/conftest.py::

    broker = mosquitto(tls=True, users={"dev-1": "pw"}, acl=ACL_TEXT)
    broker.port, broker.tls_port, broker.ca, broker.url("mqtts")
    broker.kill(); broker.start()      # an outage; persistence survives the restart
"""

from __future__ import annotations

import datetime
import getpass
import ipaddress
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(
    port: int, timeout: float = 10.0, proc: Optional[subprocess.Popen[bytes]] = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the process listening on {port} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@dataclass(frozen=True)
class Certs:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_certs(folder: Path, client_cn: str = "client") -> Certs:
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgeship test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, san: Optional[x509.SubjectAlternativeName]) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
        )
        if san is not None:
            builder = builder.add_extension(san, critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)

    san = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    server_cert, server_key = leaf("localhost", san)
    client_cert, client_key = leaf(client_cn, None)
    paths = Certs(*(folder / n for n in ("ca.pem", "server.pem", "server.key", "client.pem",
                                          "client.key")))  # fmt: skip
    paths.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths.server_cert.write_bytes(server_cert)
    paths.server_key.write_bytes(server_key)
    paths.client_cert.write_bytes(client_cert)
    paths.client_key.write_bytes(client_key)
    return paths


class Broker:
    """One mosquitto process with its own config in ``folder``."""

    def __init__(
        self,
        folder: Path,
        *,
        tls: bool = False,
        require_certificate: bool = False,
        users: Optional[dict[str, str]] = None,
        acl: Optional[str] = None,
        durable: bool = False,
    ) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        self.certs = make_certs(folder / "certs") if tls else None
        self.users = dict(users or {})
        self.log = folder / "mosquitto.log"
        self._proc: Optional[subprocess.Popen[bytes]] = None
        lines = [
            # stay the user running the test: as root, mosquitto would switch to 'mosquitto'
            # and could not read the test's files
            f"user {getpass.getuser()}",
            "per_listener_settings false",
            "persistence true",
            f"persistence_location {folder}/",
            # durable: save after every change (what survives a SIGKILL of the broker);
            # otherwise once a second or so, like a production broker's periodic save
            *(["autosave_on_changes true"] if durable else []),
            "autosave_interval 1",
            "max_queued_messages 100000",
            f"allow_anonymous {'false' if users else 'true'}",
            f"listener {self.port} 127.0.0.1",
        ]
        if users:
            passwd = folder / "passwd"
            passwd.write_text("")
            for user, password in users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True)
            lines.append(f"password_file {passwd}")
        if acl is not None:
            (folder / "acl").write_text(acl)
            lines.append(f"acl_file {folder / 'acl'}")
        if self.certs is not None:
            lines += [
                f"listener {self.tls_port} 127.0.0.1",
                f"cafile {self.certs.ca}",
                f"certfile {self.certs.server_cert}",
                f"keyfile {self.certs.server_key}",
                f"require_certificate {'true' if require_certificate else 'false'}",
            ]
        self.config = folder / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")

    @property
    def ca(self) -> Path:
        assert self.certs is not None, "this broker has no TLS listener"
        return self.certs.ca

    def url(self, scheme: str = "mqtt") -> str:
        port = self.tls_port if scheme == "mqtts" else self.port
        return f"{scheme}://127.0.0.1:{port}"

    def start(self) -> Broker:
        if self.running:
            return self
        log = self.log.open("ab")
        self._proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        wait_port(self.port, proc=self._proc)
        if self.tls_port:
            wait_port(self.tls_port, proc=self._proc)
        return self

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        """An outage: SIGKILL, no goodbye to clients (persistence is what was last saved)."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def stop(self) -> None:
        """A clean stop: SIGTERM, so the broker saves its persistence file."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
