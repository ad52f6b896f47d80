"""The ARM cores an emulated device can be: a qemu CPU model plus the ``/proc/cpuinfo`` a Linux
kernel on that core shows.

Both halves must agree. qemu user-mode passes the host's x86 ``/proc/cpuinfo`` through (and
onnxruntime's CPU detection crashes on it), so the harness bind-mounts the text below over it; and
libraries that pick kernels from that text (XNNPACK, ruy) execute instructions the emulated core
must have. Measured here (docs/arm64.md): with cpuinfo claiming ``asimddp`` on a qemu
``cortex-a72`` LiteRT dies of SIGILL; with qemu's default ``max`` CPU (SVE, i8mm) LiteRT's int8
fully-connected kernel answered up to 29 quantization steps off. So every run names its core.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CpuModel:
    """One ARM core: ``qemu`` is the ``QEMU_CPU`` name, the rest are cpuinfo fields."""

    qemu: str
    description: str
    features: str
    part: int
    variant: int
    revision: int
    implementer: int = 0x41  # Arm Ltd.
    architecture: int = 8
    """8: an arm64 kernel's cpuinfo; 7: a 32-bit (armhf) kernel's, which also names the model."""

    def cpuinfo(self, cores: int) -> str:
        """``/proc/cpuinfo`` as a Linux kernel on this core writes it, for ``cores`` cores."""
        model = (
            f"model name\t: ARMv7 Processor rev {self.revision} (v7l)\n"
            if self.architecture == 7
            else ""
        )
        block = (
            f"processor\t: {{n}}\n{model}BogoMIPS\t: 50.00\nFeatures\t: {self.features}\n"
            f"CPU implementer\t: {self.implementer:#x}\nCPU architecture: {self.architecture}\n"
            f"CPU variant\t: {self.variant:#x}\nCPU part\t: {self.part:#05x}\n"
            f"CPU revision\t: {self.revision}\n\n"
        )
        return "".join(block.format(n=n) for n in range(max(cores, 1)))


CORTEX_A53 = CpuModel(
    "cortex-a53",
    "ARMv8.0-A, the oldest 64-bit core (Raspberry Pi 3 on a 64-bit OS): no crypto, no dot product",
    "fp asimd evtstrm crc32 cpuid",
    part=0xD03,
    variant=0x0,
    revision=4,
)
CORTEX_A72 = CpuModel(
    "cortex-a72",
    "ARMv8.0-A, Raspberry Pi 4 (BCM2711): NEON and CRC32, no crypto, no dot product",
    "fp asimd evtstrm crc32 cpuid",
    part=0xD08,
    variant=0x0,
    revision=3,
)
CORTEX_A76 = CpuModel(
    "cortex-a76",
    "ARMv8.2-A, Raspberry Pi 5 (BCM2712): fp16 arithmetic and dot product",
    "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop "
    "asimddp",
    part=0xD0B,
    variant=0x4,
    revision=1,
)
NEOVERSE_N1 = CpuModel(
    "neoverse-n1",
    "ARMv8.2-A server core (AWS Graviton2, Ampere Altra): fp16 arithmetic and dot product",
    "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop "
    "asimddp",
    part=0xD0C,
    variant=0x3,
    revision=1,
)
CORTEX_A7 = CpuModel(
    "cortex-a7",
    "ARMv7-A with NEON and VFPv4, 32-bit (Raspberry Pi 2)",
    "half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm",
    part=0xC07,
    variant=0x0,
    revision=5,
    architecture=7,
)
DEFAULT_CPU = NEOVERSE_N1

PROFILE_CPUS = {
    "aarch64-generic": CORTEX_A53,
    "raspberry-pi-4": CORTEX_A72,
    "raspberry-pi-5": CORTEX_A76,
    "jetson-orin-cpu": NEOVERSE_N1,
    "armv7-tflite": CORTEX_A7,
}
"""The core each aarch64 device profile is emulated on: the weakest core the profile promises to
run on (``aarch64-generic``: "Cortex-A53 and later"), or the board's own core. qemu 7.2 has no
Cortex-A78AE (Jetson Orin); Neoverse N1 has the same ARMv8.2-A feature set."""


def cpu_for_profile(profile: str) -> CpuModel:
    """The core to emulate a device of ``profile`` on; the default core for unknown profiles."""
    return PROFILE_CPUS.get(profile, DEFAULT_CPU)
