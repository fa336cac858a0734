"""What prunereg measures itself about a run: the environment and the pruned model's size."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch
import transformers
from transformers import PreTrainedModel

import prunereg
from prunereg.spec.catalog import devices
from prunereg.spec.results import Environment, ExecutionMode, GpuState, ModelStats

DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
PROFILE_FOR_GPU = {"H200": "h200", "H100": "h100", "A100": "a100", "RTX PRO 6000": "rtx-pro-6000"}


def environment(
    device: torch.device, dtype: torch.dtype, mode: ExecutionMode = "eager", tensor_parallel: int | None = None
) -> Environment:
    """The fingerprint of a run; a tensor-parallel one names its device "N× <device>", so the registry's groups
    (same device name) keep it apart from runs on one device and on another N."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        profile = next((p for key, p in PROFILE_FOR_GPU.items() if key in name), None)
        driver = f"cuda {torch.version.cuda}"
    else:
        name, profile, driver = cpu_name(), "cpu-generic", None
    assert profile is None or profile in devices()
    return Environment(
        device=device.type,
        device_name=f"{tensor_parallel}× {name}" if tensor_parallel else name,
        device_profile=profile,
        driver=driver,
        python=platform.python_version(),
        torch=torch.__version__,
        transformers=transformers.__version__,
        prunereg=prunereg.__version__,
        git_revision=git_revision(),
        dtype=DTYPE_NAMES[dtype],
        execution_mode=mode,
        threads=torch.get_num_threads(),
        tensor_parallel=tensor_parallel,
    )


CLOCK_EVENT_REASONS = {
    0x2: "applications clocks setting",
    0x4: "software power cap",
    0x8: "hardware slowdown",
    0x10: "sync boost",
    0x20: "software thermal slowdown",
    0x40: "hardware thermal slowdown",
    0x80: "hardware power brake",
    0x100: "display clock setting",
}
"""NVML's clock-event (throttle) reason bits, idle (0x1) left out: a GPU between kernels is idle."""


def gpu_state(device: torch.device) -> GpuState | None:
    """Clocks, temperature, power and throttle reasons from NVML (nvidia-ml-py); None off CUDA or without NVML."""
    if device.type != "cuda":
        return None
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        props = torch.cuda.get_device_properties(device)
        pci = props.pci_domain_id, props.pci_bus_id, props.pci_device_id  # type: ignore[attr-defined]  # not in the stubs
        bus_id = f"{pci[0]:08x}:{pci[1]:02x}:{pci[2]:02x}.0"
        handle = pynvml.nvmlDeviceGetHandleByPciBusId(bus_id)  # CUDA and NVML may number GPUs differently
        reasons = pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle)
        return GpuState(
            sm_clock_mhz=pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
            memory_clock_mhz=pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM),
            temperature_c=pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU),
            power_w=pynvml.nvmlDeviceGetPowerUsage(handle) / 1000,
            clock_event_reasons=[name for bit, name in CLOCK_EVENT_REASONS.items() if reasons & bit],
        )
    except pynvml.NVMLError:
        return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision(checkout: Path = Path(prunereg.__file__).parent) -> str | None:
    """The prunereg checkout's commit, when it runs from one; "+dirty" when tracked files differ from it, since
    then the commit is not the code that ran (a copy of a working tree sent to a GPU machine, uncommitted edits)."""
    try:
        head, changes = (
            subprocess.run(["git", *args], cwd=checkout, capture_output=True, text=True, timeout=5)
            for args in (["rev-parse", "HEAD"], ["status", "--porcelain", "--untracked-files=no"])
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode != 0 or not head.stdout.strip():
        return None
    return head.stdout.strip() + ("+dirty" if changes.returncode != 0 or changes.stdout.strip() else "")


def _stored(p: torch.Tensor) -> tuple[int, int]:
    """(nonzero values, bytes in memory) of one parameter; 2:4 sparse weights count their packed form."""
    if isinstance(p, torch.sparse.SparseSemiStructuredTensor):
        parts = [t for t in (p.packed, p.meta) if t is not None]
        return p.numel() // 2, sum(t.numel() * t.element_size() for t in parts)
    return int(torch.count_nonzero(p)), p.numel() * p.element_size()


def model_stats(model: PreTrainedModel, activation_peak_bytes: int | None = None) -> ModelStats:
    """Counted on the model itself; peak memory = weights + the measured activation peak (CUDA only)."""
    params = list(model.parameters())
    stored = [_stored(p) for p in params]
    weight_bytes = sum(size for _, size in stored)
    return ModelStats(
        parameters=sum(p.numel() for p in params),
        nonzero_parameters=sum(nonzero for nonzero, _ in stored),
        weight_bytes=weight_bytes,
        num_layers=len(model.model.layers),
        peak_memory_bytes=None if activation_peak_bytes is None else weight_bytes + activation_peak_bytes,
    )
