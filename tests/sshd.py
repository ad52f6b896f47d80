"""A real OpenSSH server for tests: its own loopback port, throwaway host and client keys.

::

    with Sshd(tmp_path / "sshd") as server:
        server.url("/srv/inbox")          # ssh://USER@127.0.0.1:PORT/srv/inbox
        server.client_args()              # --identity KEY --ssh-option UserKnownHostsFile=…

The server lets in only the test's client key, for the user running the tests, and nothing else
(no passwords, no PAM). The client trusts only this server's host key.
"""

from __future__ import annotations

import getpass
import os
import subprocess
from pathlib import Path
from typing import Any, Optional

from tests.broker import free_port, wait_port

SSHD = "/usr/sbin/sshd"  # sshd must be started by absolute path (it re-executes itself)
PRIVSEP_DIR = Path("/run/sshd")


def keygen(path: Path) -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgeship-test", "-f", str(path)],
        check=True,
    )
    return path


class Sshd:
    """One ``sshd -D`` process with its config and keys in ``folder``."""

    def __init__(self, folder: Path) -> None:
        assert Path(SSHD).is_file(), f"{SSHD} is missing: apt-get install openssh-server"
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.user = getpass.getuser()
        self.port = free_port()
        self.host_key = keygen(folder / "host_key")
        self.client_key = keygen(folder / "client_key")
        self.authorized_keys = folder / "authorized_keys"
        self.authorized_keys.write_bytes(Path(f"{self.client_key}.pub").read_bytes())
        host_pub = Path(f"{self.host_key}.pub").read_text().split()
        self.known_hosts = folder / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        self.log = folder / "sshd.log"
        self.config = folder / "sshd_config"
        self.config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.host_key}",
                    f"PidFile {folder / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.authorized_keys}",
                    f"AllowUsers {self.user}",
                    "StrictModes no",
                    "UsePAM no",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "X11Forwarding no",
                    "AllowTcpForwarding no",
                    "PrintMotd no",
                    "LogLevel VERBOSE",
                ]
            )
            + "\n"
        )
        self._proc: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> Sshd:
        if os.geteuid() == 0 and not PRIVSEP_DIR.is_dir():
            # sshd running as root insists on its privilege separation folder (Debian's service
            # unit creates it at boot).
            PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        subprocess.run([SSHD, "-t", "-f", str(self.config)], check=True)
        log = self.log.open("ab")
        self._proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.config)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        wait_port(self.port, proc=self._proc)
        return self

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(10)

    def __enter__(self) -> Sshd:
        return self.start()

    def __exit__(self, *_: Any) -> None:
        self.stop()

    def url(self, path: str) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}/{path.lstrip('/')}"

    def client_args(self) -> list[str]:
        """``edgeship push`` options that log in with the test key and trust only this server."""
        return [
            "--identity",
            str(self.client_key),
            "--ssh-option",
            f"UserKnownHostsFile={self.known_hosts}",
            "--ssh-option",
            "StrictHostKeyChecking=yes",
            "--ssh-option",
            "GlobalKnownHostsFile=/dev/null",
        ]
