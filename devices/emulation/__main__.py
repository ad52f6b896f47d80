"""``python -m devices.emulation``: prepare an emulated ARM device and use it by hand.

Commands (add ``--armv7`` before the command for the 32-bit armhf device):

- ``check``: exit 0 when this host can run the emulated device (root, a cache folder that can
  be created, qemu in binfmt_misc)
- ``prepare``: build or refresh the cached device and print the time of each step
- ``run [--copy FILE …] -- ARGS``: run ``edgeship-device ARGS`` inside it
- ``shell``: an interactive shell inside it
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

from devices.emulation.arm64 import Arm64Device, EmulationConfig, EmulationError, host_setup


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devices.emulation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--armv7", action="store_true", help="the 32-bit ARM (armhf, TFLite-only) device"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="exit 0 when this host can run the emulated device")
    sub.add_parser("prepare", help="build or refresh the cached device and print its timings")
    run = sub.add_parser("run", help="run edgeship-device ARGS in the device (store kept)")
    run.add_argument(
        "--copy",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="copy FILE into /work inside the device first; repeatable",
    )
    run.add_argument("args", nargs=argparse.REMAINDER)
    sub.add_parser("shell", help="an interactive shell inside the device (store kept)")
    opts = parser.parse_args(argv)
    config = EmulationConfig.armv7() if opts.armv7 else EmulationConfig()
    try:
        if opts.command == "check":
            host_setup(config)
            _log(f"{config.deb_arch}: this host can emulate it (qemu-{config.qemu_arch} enabled)")
            return 0
        if opts.command == "prepare":
            with Arm64Device.prepare(config, progress=_log, fresh=False) as dev:
                _log(f"{config.deb_arch}: {dev.root} ready, setup {dev.setup_seconds:.1f} s")
            return 0
        with Arm64Device.prepare(config, progress=_log, fresh=False) as dev:
            if opts.command == "shell":
                return subprocess.call(dev.command(["bash", "-l"], {"PS1": "arm64# "}))
            for path in opts.copy:
                _log(f"copied {path} to {dev.copy_in(path)}")
            args = opts.args[1:] if opts.args[:1] == ["--"] else opts.args
            done = dev.run(args)
            sys.stdout.write(done.stdout)
            sys.stderr.write(done.stderr)
            _log(f"{config.deb_arch}: exit {done.returncode} after {done.seconds:.2f} s")
            return done.returncode
    except EmulationError as e:
        _log(f"{config.deb_arch}: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
