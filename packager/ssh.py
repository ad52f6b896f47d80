"""Running a command on a device through the system ``ssh`` client.

The user's own ssh set-up applies (``~/.ssh/config``, agent, known hosts); edgeship adds
``BatchMode`` (never a prompt), a connect timeout and keep-alives, and options given by the caller
come first so they win. What the device prints is kept up to a limit, and a command that outlives
its time limit is killed. ``packager/push.py`` builds on this.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Optional
from urllib.parse import unquote, urlsplit

from runtime.errors import TransportError, UsageError

SSH_SCHEME = "ssh://"
_ERROR_PREFIX = re.compile(r"^[\w.-]+: error: ")


@dataclass(frozen=True)
class SshDestination:
    """Where an ``ssh://`` push goes: ``path`` is the remote folder (relative to the remote home
    when it does not start with ``/``)."""

    host: str
    path: str
    user: Optional[str] = None
    port: Optional[int] = None

    @classmethod
    def parse(cls, url: str) -> SshDestination:
        """Parse ``ssh://[USER@]HOST[:PORT]/PATH``; raises UsageError when it is not one."""
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError as e:
            raise UsageError(f"{url}: bad port") from e
        host, user, path = parts.hostname, parts.username, unquote(parts.path)
        if parts.scheme != "ssh" or not host or parts.query or parts.fragment or parts.password:
            raise UsageError(f"{url}: expected ssh://[USER@]HOST[:PORT]/PATH")
        if host.startswith("-") or (user or "").startswith("-"):
            raise UsageError(f"{url}: a host or user may not start with '-'")
        if path in ("", "/"):
            raise UsageError(f"{url}: name the remote folder, e.g. ssh://{host}/~/bundles")
        if path == "/~" or path.startswith("/~/"):
            path = path[3:] or "."
        return cls(host, path, unquote(user) if user else None, port)

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port else ""
        return f"{SSH_SCHEME}{user}{host}{port}/{self.path.lstrip('/')}"


@dataclass(frozen=True)
class SshSettings:
    """How ``ssh`` is run and what it runs on the device."""

    identity: Optional[Path] = None
    """Private key for ``ssh -i`` (with ``IdentitiesOnly``); None: ssh's own choice."""
    options: tuple[str, ...] = ()
    """Extra ``ssh -o KEY=VALUE`` options; they come first, so they win over the defaults below."""
    remote_command: str = "edgeship-device"
    """The device command, split like a shell would (e.g. ``sudo -n edgeship-device``)."""
    remote_home: Optional[str] = None
    """``--home`` for the remote install; None: the device's own default."""
    install: bool = True
    """False: only copy (e.g. into the inbox folder of a device running the agent)."""
    ssh_program: str = "ssh"
    connect_timeout_s: int = 10
    """Seconds to establish the connection (``ConnectTimeout``)."""
    alive_interval_s: int = 15
    """Seconds between keep-alive probes; four unanswered probes end the connection."""
    command_timeout_s: float = 3600.0
    """Most seconds for each remote step (the copy, then the install)."""
    max_reply_bytes: int = 1024 * 1024
    """Most bytes kept of the device's standard output and standard error (each)."""


def ssh_command(destination: SshDestination, settings: SshSettings, remote: str) -> list[str]:
    """The ``ssh`` argument list that runs the shell command line ``remote`` on the device."""
    argv = [settings.ssh_program, "-T"]
    for option in settings.options:
        argv += ["-o", option]
    if settings.identity is not None:
        argv += ["-i", str(settings.identity), "-o", "IdentitiesOnly=yes"]
    for option in (
        "BatchMode=yes",
        f"ConnectTimeout={settings.connect_timeout_s}",
        f"ServerAliveInterval={settings.alive_interval_s}",
        "ServerAliveCountMax=4",
        "LogLevel=ERROR",
    ):
        argv += ["-o", option]
    if destination.port:
        argv += ["-p", str(destination.port)]
    if destination.user:
        argv += ["-l", destination.user]
    return [*argv, "--", destination.host, remote]


@dataclass(frozen=True)
class RemoteRun:
    """How a remote command ended: its exit status (255: ssh itself failed) and its output,
    each cut at ``SshSettings.max_reply_bytes``."""

    code: int
    stdout: bytes
    stderr: bytes

    def reason(self) -> str:
        """The last line of standard error, without the CLI's ``PROG: error:`` prefix."""
        lines = [s.strip() for s in self.stderr.decode("utf-8", "replace").splitlines()]
        last = next((s for s in reversed(lines) if s), f"exit status {self.code}")
        return _ERROR_PREFIX.sub("", last)[:500]


class _Drain(threading.Thread):
    """Reads a pipe to its end, keeping at most ``limit`` bytes."""

    def __init__(self, pipe: IO[bytes], limit: int) -> None:
        super().__init__(daemon=True)
        self.fd, self.limit, self.kept = pipe.fileno(), limit, bytearray()
        self.start()

    def run(self) -> None:
        while chunk := os.read(self.fd, 65536):
            room = self.limit - len(self.kept)
            if room > 0:
                self.kept += chunk[:room]


def run_remote(
    destination: SshDestination,
    settings: SshSettings,
    command: str,
    feed: Optional[Callable[[IO[bytes]], None]] = None,
) -> RemoteRun:
    """Run the shell command line ``command`` on the device; ``feed`` writes its standard input.

    A non-zero status is returned, not raised. Raises TransportError when ssh cannot be started
    or the command outlives ``settings.command_timeout_s`` (it is killed).
    """
    argv = ssh_command(destination, settings, command)
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if feed is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except OSError as e:
        raise TransportError(f"cannot run {argv[0]}: {e.strerror or e}") from e
    assert proc.stdout is not None and proc.stderr is not None
    readers = [_Drain(proc.stdout, settings.max_reply_bytes)]
    readers.append(_Drain(proc.stderr, settings.max_reply_bytes))
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        proc.kill()

    timer = threading.Timer(settings.command_timeout_s, expire)
    timer.start()
    try:
        if feed is not None and proc.stdin is not None:
            # BrokenPipeError: it ended early, and its exit status says why.
            with contextlib.suppress(BrokenPipeError), proc.stdin:
                feed(proc.stdin)
        code = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for reader, pipe in zip(readers, (proc.stdout, proc.stderr)):
            # A grandchild that kept the pipe open must not hold us up: the reader is a daemon
            # and keeps its pipe.
            reader.join(5.0)
            if not reader.is_alive():
                pipe.close()
    if expired.is_set():
        raise TransportError(f"{argv[0]} did not finish within {settings.command_timeout_s:g} s")
    return RemoteRun(code, bytes(readers[0].kept), bytes(readers[1].kept))
