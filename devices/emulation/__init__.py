"""Emulated devices for tests and CI: host-side tooling, never installed on a device.

``arm64`` prepares a Debian arm64 root filesystem run under qemu user-mode emulation and drives
``edgeship-device`` inside it (docs/arm64.md). Nothing under ``runtime/`` imports this package.
"""
