"""Dense bf16 peak of the GPUs MFU is quoted against, by the name CUDA reports.

Datasheet figures without sparsity (the "with sparsity" numbers are twice these). The SXM parts
report plain names ("NVIDIA H100 80GB HBM3", "NVIDIA H200"); the PCIe and NVL parts, with lower
clocks and power, say so in the name, so the more specific entries come first.
"""

from __future__ import annotations

PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("GH200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200 NVL", 835.0),
    ("H100", 989.0),  # SXM
    ("H200", 989.0),  # SXM: the H100's compute with more memory
    ("A100", 312.0),
]


def peak_bf16_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of the GPU called `device_name`, or None for an unknown one."""
    name = device_name.lower()
    for key, peak in PEAK_BF16_TFLOPS:
        if key.lower() in name:
            return peak
    return None
