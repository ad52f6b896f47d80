"""``edgeship push``: put a bundle onto a device, over SSH or into a folder.

Two destinations:

- ``ssh://[USER@]HOST[:PORT]/PATH``: the system ``ssh`` streams the bundle into ``PATH/.NAME.part``
  on the device, checks the byte count there and renames it to ``PATH/NAME``, then runs
  ``edgeship-device install PATH/NAME --json`` on the device and returns its result. ``/~/PATH``
  means ``PATH`` under the remote user's home.
- a folder (an SD card, a USB stick, an inbox on a mounted share): the bundle is written to
  ``DIR/.NAME.part``, fsynced and renamed to ``DIR/NAME``.

Either way a file under its final name is always complete, so a device's inbox
(``runtime/inbox.py``) never takes a half-copied bundle. ``NAME`` is the bundle's canonical name
(``NAME-VERSION-PROFILE.eship``) from its manifest. Before sending, the bundle is checked locally
(it must parse and its payload must match its manifest; signatures are the device's decision).

Failures are typed: a damaged local bundle is a BundleError, a failed connection or copy a
TransportError (exit 7), a bundle the device refused a RemoteInstallError carrying the device's own
exit code and one-line reason (1 for a refused bundle or a failed self-test).
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import shlex
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, Iterator, Optional, Union

from packager.inspect import inspect_bundle
from packager.ssh import SSH_SCHEME, SshDestination, SshSettings, run_remote
from runtime.bundle import Progress
from runtime.errors import (
    EXIT_CODES,
    BundleSizeError,
    PayloadError,
    RemoteInstallError,
    TransportError,
    UsageError,
)
from runtime.fsutil import fsync_dir
from runtime.limits import DEFAULT_BUNDLE_LIMITS

CHUNK = 1024 * 1024

# Runs on the device under ``sh -c``. A connection that drops mid-copy can look like a clean end
# of input to ``cat``, hence the byte count before the rename.
_UPLOAD_SCRIPT = """\
dir=$1; name=$2; size=$3
mkdir -p -- "$dir" || exit 1
tmp="$dir/.$name.part"
trap 'rm -f -- "$tmp"' EXIT
trap 'exit 1' HUP INT TERM
cat > "$tmp" || exit 1
got=$(wc -c < "$tmp")
if [ "$got" -ne "$size" ]; then echo "received $got of $size bytes" >&2; exit 1; fi
mv -f -- "$tmp" "$dir/$name"
"""


@dataclass(frozen=True)
class PushResult:
    """What was pushed where; ``remote`` is the device's install result (``install --json``)."""

    bundle: Path
    destination: str
    path: str
    size: int
    manifest: dict[str, Any]
    remote: Optional[dict[str, Any]] = None

    def to_dict(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "bundle": str(self.bundle),
            "destination": self.destination,
            "path": self.path,
            "bytes": self.size,
            "name": m["name"],
            "version": m["version"],
            "sequence": m["sequence"],
            "profile": m["target"]["profile"],
            "installed": self.remote is not None,
            "remote": self.remote,
        }


def parse_destination(to: str) -> Union[SshDestination, Path]:
    """An ``ssh://`` URL or a local folder; other URL schemes are a UsageError."""
    if to.startswith(SSH_SCHEME):
        return SshDestination.parse(to)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", to):
        raise UsageError(f"{to}: only ssh:// destinations and local folders are supported")
    return Path(to)


def push(
    bundle: Path,
    to: str,
    settings: Optional[SshSettings] = None,
    progress: Optional[Progress] = None,
) -> PushResult:
    """Check ``bundle`` locally, then push it to ``to`` (see the module docstring).

    Raises UsageError (bad destination or file), a BundleError (the local file is damaged),
    TransportError (connection or copy failed), RemoteInstallError (the device refused it).
    """
    settings = settings or SshSettings()
    destination = parse_destination(to)
    if isinstance(destination, Path) and (
        settings.identity
        or settings.options
        or settings.remote_home
        or settings.remote_command != SshSettings.remote_command
    ):
        raise UsageError("the ssh settings apply to ssh:// destinations only")
    manifest, size = check_bundle(bundle)
    m = manifest
    filename = f"{m['name']}-{m['version']}-{m['target']['profile']}.eship"
    with _open_unchanged(bundle, size) as source:
        if isinstance(destination, Path):
            path = copy_to_folder(source, size, destination, filename, progress)
            return PushResult(bundle, str(destination), str(path), size, manifest)
        remote_path = upload(source, size, destination, filename, settings, progress)
    remote = install_remote(destination, remote_path, settings) if settings.install else None
    return PushResult(bundle, str(destination), remote_path, size, manifest, remote)


def check_bundle(bundle: Path) -> tuple[dict[str, Any], int]:
    """The bundle's manifest (as a document) and size, after a structural check: a regular file
    within the size limit, a well-formed archive and manifest, payload matching the manifest."""
    try:
        st = bundle.stat()
    except OSError as e:
        raise UsageError(f"cannot read {bundle}: {e.strerror}") from e
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{bundle} is not a regular file")
    limit = DEFAULT_BUNDLE_LIMITS.max_bundle_bytes
    if st.st_size > limit:
        raise BundleSizeError(f"{bundle} is {st.st_size} bytes, above the limit of {limit}")
    doc = inspect_bundle(bundle)
    if not doc["payload_ok"]:
        raise PayloadError(f"{bundle} is damaged, not sent: {doc['payload_error']}")
    return doc["manifest"], st.st_size


@contextlib.contextmanager
def _open_unchanged(bundle: Path, size: int) -> Iterator[BinaryIO]:
    try:
        f = bundle.open("rb")
    except OSError as e:
        raise UsageError(f"cannot read {bundle}: {e.strerror}") from e
    with f:
        if os.fstat(f.fileno()).st_size != size:
            raise UsageError(f"{bundle} changed while it was being checked")
        yield f


def _copy(source: BinaryIO, size: int, sink: IO[bytes], progress: Optional[Progress]) -> None:
    sent = 0
    while sent < size:
        chunk = source.read(min(CHUNK, size - sent))
        if not chunk:
            raise UsageError(f"the bundle shrank while it was being sent ({sent} of {size} bytes)")
        sink.write(chunk)
        sent += len(chunk)
        if progress is not None:
            progress(sent, size)


def copy_to_folder(
    source: BinaryIO, size: int, folder: Path, filename: str, progress: Optional[Progress]
) -> Path:
    """Write ``size`` bytes of ``source`` to ``folder/filename`` through ``.filename.part``,
    fsynced before the rename. Raises UsageError (no such folder) or TransportError."""
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder (is the card mounted?)")
    part = folder / f".{filename}.part"
    final = folder / filename
    try:
        with part.open("wb") as sink:
            _copy(source, size, sink, progress)
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(part, final)
        fsync_dir(folder)
    except OSError as e:
        with contextlib.suppress(OSError):
            part.unlink()
        raise TransportError(f"cannot write {final}: {e.strerror or e}") from e
    except BaseException:
        with contextlib.suppress(OSError):
            part.unlink()
        raise
    return final


def upload(
    source: BinaryIO,
    size: int,
    destination: SshDestination,
    filename: str,
    settings: SshSettings,
    progress: Optional[Progress],
) -> str:
    """Stream the bundle to the device; returns its path there. Raises TransportError."""
    remote = shlex.join(
        ["sh", "-c", _UPLOAD_SCRIPT, "edgeship-push", destination.path, filename, str(size)]
    )
    done = run_remote(
        destination, settings, remote, lambda sink: _copy(source, size, sink, progress)
    )
    if done.code != 0:
        what = "ssh" if done.code == 255 else "copy"
        raise TransportError(f"{what} to {destination} failed: {done.reason()}")
    return posixpath.join(destination.path, filename)


def install_remote(
    destination: SshDestination, remote_path: str, settings: SshSettings
) -> dict[str, Any]:
    """Run ``REMOTE_COMMAND install PATH --json`` on the device; returns its JSON result.

    Raises TransportError (no connection, command missing or killed, unreadable reply) or
    RemoteInstallError with the device's exit code and reason.
    """
    words = shlex.split(settings.remote_command) or ["edgeship-device"]
    args = [*words, "install", remote_path, "--json"]
    if settings.remote_home:
        args += ["--home", settings.remote_home]
    done = run_remote(destination, settings, shlex.join(args))
    if done.code == 0:
        try:
            doc = json.loads(done.stdout)
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or "version" not in doc:
            raise TransportError(f"{destination}: unexpected reply from {words[0]} install")
        return doc
    if done.code == 255:
        raise TransportError(f"ssh to {destination} failed: {done.reason()}")
    if done.code in EXIT_CODES:
        raise RemoteInstallError(f"{destination}: install failed: {done.reason()}", done.code)
    raise TransportError(
        f"{destination}: {words[0]} install ended with status {done.code}: {done.reason()}"
    )
