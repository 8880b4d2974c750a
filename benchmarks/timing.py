"""What the benchmark scripts share: waiting for the device, and naming it in their reports."""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so wall-clock times measure it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model and torch's thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model} ({torch.get_num_threads()} threads)"
