"""The process the crash test kills: one real install or rollback on a real store, whose file
operations are counted and whose Nth operation of a chosen kind is answered with SIGKILL.

Nothing in ``runtime/`` knows about this: the child replaces the ``os`` functions the store and
bundle code call (and wraps the file objects ``os.fdopen`` returns) before it runs the operation.

    python -m tests.reliability.crash_child HOME OP ARG KIND N WHEN [EVENTS]

OP is ``install`` (ARG: a bundle file) or ``rollback`` (ARG: a model name). The Nth call of KIND
(one of ``KINDS``) kills the process ``before`` or ``after`` it runs (WHEN); KIND ``none`` kills
nothing. EVENTS, when given, receives a JSON list of ``[kind, phase]`` for every call made, where
the phase names the step of the install protocol that made it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable

KINDS = ("write", "fsync", "replace", "rename", "symlink", "unlink", "mkdir")
PATCHED = {
    "write": ("write",),
    "fsync": ("fsync",),
    "replace": ("replace",),
    "rename": ("rename",),
    "symlink": ("symlink",),
    "unlink": ("unlink", "remove", "rmdir"),
    "mkdir": ("mkdir",),
}
RUNTIME = str(Path(__file__).resolve().parents[2] / "runtime")


def phase() -> str:
    """The step of the install protocol the current call belongs to, from the call stack."""
    names = []
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.startswith(RUNTIME):
            names.append(frame.f_code.co_name)
        frame = frame.f_back  # type: ignore[assignment]
    for function, label in (
        ("save_state", "state write"),
        ("atomic_symlink", "swap"),
        ("place_slot", "place slot"),
        ("_write", "extract"),
        ("read_bundle", "extract"),
        ("_clear_tmp", "clear leftovers"),
        ("staging_dir", "staging"),
        ("install_bundle", "model folder"),
    ):
        if function in names:
            return label
    return names[0] if names else "other"


class Interposer:
    def __init__(self, kind: str, n: int, when: str) -> None:
        self.kind, self.n, self.when = kind, n, when
        self.counts = dict.fromkeys(KINDS, 0)
        self.events: list[list[str]] = []

    def hit(self, kind: str, call: Callable[[], Any]) -> Any:
        self.counts[kind] += 1
        self.events.append([kind, phase()])
        fatal = kind == self.kind and self.counts[kind] == self.n
        if fatal and self.when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        try:
            return call()
        finally:  # "after" a call that raised (an unlink of nothing, say) is a point too
            if fatal:
                os.kill(os.getpid(), signal.SIGKILL)

    def install(self) -> None:
        for kind, names in PATCHED.items():
            for name in names:
                original = getattr(os, name)
                setattr(os, name, self._wrap(kind, original))
        fdopen = os.fdopen
        hit = self.hit

        class File:
            """A file object whose ``write`` calls are counted."""

            def __init__(self, f: Any) -> None:
                self._f = f

            def write(self, data: Any) -> Any:
                return hit("write", lambda: self._f.write(data))

            def __getattr__(self, name: str) -> Any:
                return getattr(self._f, name)

            def __enter__(self) -> File:
                self._f.__enter__()
                return self

            def __exit__(self, *exc: Any) -> Any:
                return self._f.__exit__(*exc)

        os.fdopen = lambda *a, **k: File(fdopen(*a, **k))  # type: ignore[assignment]

    def _wrap(self, kind: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            return self.hit(kind, lambda: original(*args, **kwargs))

        return wrapped


def main(argv: list[str]) -> int:
    home, op, arg, kind, n, when = argv[:6]
    events_out = argv[6] if len(argv) > 6 else None
    from runtime.install import install_bundle, rollback
    from runtime.store import Store

    store = Store(Path(home))
    interposer = Interposer(kind, int(n), when)
    interposer.install()
    if op == "install":
        install_bundle(store, Path(arg))
    elif op == "rollback":
        rollback(store, arg)
    else:
        raise SystemExit(f"unknown operation {op!r}")
    if events_out:
        Path(events_out).write_text(json.dumps(interposer.events))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
