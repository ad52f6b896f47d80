"""The inbox: a folder the agent watches, installing every complete bundle that appears in it.

A bundle reaches the folder by ``edgeship push --to DIR`` (an SD card or USB stick), by
``edgeship push --to ssh://… --no-install``, or by any copy tool. Only complete files are taken:
names starting with a dot and names ending in ``.part`` are ignored (that is how the pushers write
a file before renaming it into place), and a file must keep the same size, modification time and
inode over two polls in a row, so a copy that writes under the final name is not read half-way.

Each bundle taken is installed through :func:`runtime.install.install_bundle` and then moved out
of the way, so nothing is tried twice: into ``installed/`` when it installed (or was already
active), into ``failed/`` next to a ``NAME.reason.txt`` naming the error and the verification step
otherwise. A poll handles at most ``InboxLimits.max_files_per_poll`` bundles, oldest first.

A bundle that cannot be moved (a full disk, a read-only card) stays where it is, with a log line,
and is not taken again until it changes or the agent restarts; its install outcome stands either
way. A ``NAME.reason.txt`` that cannot be written is logged, and the bundle is in ``failed/``.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

from runtime.errors import BundleError, BundleFormatError, BundleSizeError, EdgeshipError
from runtime.fsutil import atomic_write, fsync_dir
from runtime.install import install_bundle
from runtime.limits import DEFAULT_INBOX_LIMITS, InboxLimits
from runtime.manifest import format_time
from runtime.store import Store

SUFFIX = ".eship"
PARTIAL_SUFFIX = ".part"
INSTALLED = "installed"
FAILED = "failed"
REASON_SUFFIX = ".reason.txt"

EventSink = Callable[[str, dict[str, Any]], None]
"""Called as ``on_event(kind, doc)`` with kind ``"install"`` or ``"install-failed"``."""

_log = logging.getLogger("edgeship.inbox")


@dataclass(frozen=True)
class InboxResult:
    """What happened to one file: installed (``install`` holds the install result's document)
    or refused (``error``/``step``/``message`` say why; ``exit_code`` is the CLI's code for it)."""

    file: str
    moved_to: Optional[Path]
    install: Optional[dict[str, Any]] = None
    error: Optional[str] = None
    step: Optional[str] = None
    message: Optional[str] = None
    exit_code: Optional[int] = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "file": self.file,
            "ok": self.ok,
            "moved_to": str(self.moved_to) if self.moved_to else None,
        }
        if self.ok:
            doc["install"] = self.install
        else:
            doc.update(
                error=self.error, step=self.step, message=self.message, exit_code=self.exit_code
            )
        return doc


@dataclass(frozen=True)
class _Seen:
    size: int
    mtime_ns: int
    inode: int
    regular: bool


class Inbox:
    """Watches ``folder`` and installs the bundles that appear there into ``store``.

    ``poll_once`` is not thread-safe with itself: one thread polls (``run`` does it in a loop).
    Installs take the store's lock, so other installs (the CLI, deployments) may run alongside.
    """

    def __init__(
        self,
        store: Store,
        folder: Path,
        *,
        limits: InboxLimits = DEFAULT_INBOX_LIMITS,
        on_event: Optional[EventSink] = None,
        allow_any_target: bool = False,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self.store = store
        self.folder = folder
        self.limits = limits
        self.on_event = on_event
        self.allow_any_target = allow_any_target
        self.clock = clock
        self._previous: dict[str, _Seen] = {}
        # Files that could not be moved away (read-only medium) are remembered so that they are
        # not installed again on every poll; a changed file is a new file.
        self._stuck: dict[str, _Seen] = {}

    def poll_once(self) -> list[InboxResult]:
        """Install the complete bundles found now; return what happened to each, oldest first.

        Raises nothing for a bad bundle: each refusal is recorded in ``failed/`` and returned.
        A missing inbox folder (a card not mounted yet) is an empty poll.
        """
        current = self._scan()
        stable = sorted(
            (seen.mtime_ns, name)
            for name, seen in current.items()
            if self._previous.get(name) == seen and self._stuck.get(name) != seen
        )
        self._previous = current
        self._stuck = {k: v for k, v in self._stuck.items() if current.get(k) == v}
        results = []
        for _, name in stable[: self.limits.max_files_per_poll]:
            result = self._take(name, current[name])
            results.append(result)
            self._announce(result)
        return results

    def run(self, stop: threading.Event, interval_s: float = 2.0) -> None:
        """Poll every ``interval_s`` seconds until ``stop`` is set; returns promptly after that.

        Never raises for a bad bundle. An unexpected failure of a whole poll (the folder turned
        unreadable) is logged and the next poll tries again.
        """
        while not stop.is_set():
            try:
                self.poll_once()
            except Exception:  # noqa: BLE001 - a service loop outlives one failed poll
                _log.exception("inbox poll of %s failed", self.folder)
            stop.wait(interval_s)

    # --- internals -------------------------------------------------------------------------

    def _scan(self) -> dict[str, _Seen]:
        found: dict[str, _Seen] = {}
        try:
            entries = os.scandir(self.folder)
        except (FileNotFoundError, NotADirectoryError):
            return found
        with entries:
            for count, entry in enumerate(entries):
                if count >= self.limits.max_entries_scanned:
                    break
                name = entry.name
                if name.startswith(".") or not name.endswith(SUFFIX):
                    continue  # also skips NAME.eship.part and the installed/ failed/ folders
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                found[name] = _Seen(st.st_size, st.st_mtime_ns, st.st_ino, stat.S_ISREG(st.st_mode))
        return found

    def _take(self, name: str, seen: _Seen) -> InboxResult:
        result = self._install(name, seen)
        if result.moved_to is None:
            self._stuck[name] = seen
        return result

    def _install(self, name: str, seen: _Seen) -> InboxResult:
        path = self.folder / name
        try:
            if not seen.regular:
                raise BundleFormatError(f"{name} is not a regular file")
            if seen.size > self.limits.max_bundle_bytes:
                raise BundleSizeError(
                    f"{name} is {seen.size} bytes, above the inbox limit of "
                    f"{self.limits.max_bundle_bytes}"
                )
            result = install_bundle(
                self.store, path, allow_any_target=self.allow_any_target, now=self.clock()
            )
        except EdgeshipError as e:
            step = e.step if isinstance(e, BundleError) else None
            return self._refuse(name, type(e).__name__, step, str(e), e.exit_code)
        except OSError as e:
            return self._refuse(name, "OSError", "io", f"{name}: {e}", 1)
        except Exception as e:  # noqa: BLE001 - an unforeseen failure on one file must not stop
            # the inbox or make it retry that file forever: it is recorded like a refusal.
            return self._refuse(name, type(e).__name__, "internal", f"{name}: {e}", 1)
        return InboxResult(name, self._move(path, INSTALLED, name), install=result.to_dict())

    def _refuse(
        self, name: str, error: str, step: Optional[str], message: str, exit_code: int
    ) -> InboxResult:
        moved = self._move(self.folder / name, FAILED, name)
        if moved is not None:
            reason = (
                f"error: {error}\nstep: {step or '-'}\nmessage: {message}\n"
                f"exit_code: {exit_code}\nat: {format_time(self.clock())}\n"
            )
            try:
                atomic_write(moved.with_name(name + REASON_SUFFIX), reason.encode("utf-8"))
            except OSError as e:
                _log.warning(
                    "inbox: %s refused (%s), and its %s cannot be written: %s",
                    name,
                    message,
                    REASON_SUFFIX,
                    e,
                )
        return InboxResult(
            name, moved, error=error, step=step, message=message, exit_code=exit_code
        )

    def _move(self, path: Path, sub: str, name: str) -> Optional[Path]:
        """Move ``path`` into ``folder/sub/``; None when the medium does not allow it."""
        target_dir = self.folder / sub
        target = target_dir / name
        try:
            target_dir.mkdir(exist_ok=True)
            os.replace(path, target)
            fsync_dir(self.folder)
        except OSError as e:
            _log.warning(
                "inbox: cannot move %s to %s/ (%s); it stays and is not taken again until it "
                "changes or the agent restarts",
                path,
                sub,
                e,
            )
            return None
        return target

    def _announce(self, result: InboxResult) -> None:
        if self.on_event is None:
            return
        if result.install is not None:
            self.on_event("install", {"source": "inbox", "file": result.file, **result.install})
        else:
            doc = result.to_dict()
            self.on_event(
                "install-failed",
                {"source": "inbox", **{k: doc[k] for k in ("file", "error", "step", "message")}},
            )
