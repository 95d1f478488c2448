"""What every benchmark shares: the device / dtype / compile / one-thread flags, the clock, the load, where results go.

`--dtype`: `fp32`; `bf16-autocast` (fp32 weights under `torch.autocast`, as training with fp32 master weights runs);
`bf16` (weights cast to bf16). `--one-thread` times with the process's CPU time on one thread, which the machine's
other load barely moves (wall time is what a shared machine's neighbours change). `--compile` compiles ours and the
peer alike. GPU runs write `bench/results/gpu-<name>.json` so that they never replace the CPU figures.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = ("fp32", "bf16-autocast", "bf16")


def add_arguments(parser) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32")
    parser.add_argument("--compile", action="store_true", help="torch.compile ours and the peer")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile's backend (aot_eager: no codegen)")
    parser.add_argument("--one-thread", action="store_true",
                        help="one thread, timed by process CPU time (CPU only): load-independent ratios")


def forwarded_flags(args) -> list[str]:
    """These flags as a worker process's command line takes them."""
    return ["--device", args.device, "--dtype", args.dtype,
            *(["--compile", "--compile-backend", args.compile_backend] if args.compile else []),
            *(["--one-thread"] if args.one_thread else [])]


@dataclass
class Setup:
    device: torch.device
    dtype: str
    compile: bool
    one_thread: bool
    compile_backend: str = "inductor"

    @classmethod
    def from_args(cls, args) -> Setup:
        device = torch.device(args.device)
        if args.one_thread:
            if device.type != "cpu":
                raise ValueError(f"--one-thread times process CPU time and is for --device cpu, got {device}")
            torch.set_num_threads(1)
        return cls(device, args.dtype, args.compile, args.one_thread, args.compile_backend)

    @property
    def weight_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.dtype == "bf16" else torch.float32

    def autocast(self):
        if self.dtype == "bf16-autocast":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def prepare(self, model, dynamic: bool | None = None):
        """The model on the device in the weight dtype, compiled if asked; ours with the trainer's value checks off."""
        model = model.to(self.device, self.weight_dtype)
        if hasattr(model, "set_input_value_checks"):
            model.set_input_value_checks(False)  # as GatedGPT2Trainer runs it: the data layer checked the values
        if self.compile:
            model.forward = torch.compile(model.forward, dynamic=dynamic, backend=self.compile_backend)
        return model

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def clock(self) -> float:
        """Seconds: process CPU time in one-thread mode, else wall time after the device's queued work."""
        if self.one_thread:
            return time.process_time()
        self.synchronize()
        return time.perf_counter()

    def machine(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
        isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "x86"
        threads = torch.get_num_threads()
        return f"CPU ({os.cpu_count()} cores, {isa}), {threads} thread{'s' if threads > 1 else ''}"

    def describe(self) -> dict:
        return dict(machine=self.machine(), device=str(self.device), dtype=self.dtype,
                    compile=self.compile_backend if self.compile else False,
                    clock="process CPU time, 1 thread" if self.one_thread else "wall", torch=torch.__version__,
                    load_before=load_average())

    def out_path(self, name: str, given: str | None) -> Path:
        if given:
            return Path(given)
        return RESULTS / (f"gpu-{name}.json" if self.device.type == "cuda" else f"{name}.json")


def load_average() -> list[float] | None:
    """The 1/5/15-minute load average, to report beside wall-time figures."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def matmul_peak_flops(setup: Setup, seconds: float = 0.5) -> float:
    """The fp32 (or bf16) square-matmul rate on this device, for MFU. The size doubles from 256² while one product
    takes under 50 ms, up to 2048² on CPU and 8192² on a GPU (smaller ones are launch-bound there), and products are
    timed for about `seconds`: a fixed 2048² count would take minutes on a CPU without bf16 instructions (AVX2),
    where bf16 matmuls are emulated."""
    dtype = torch.float32 if setup.dtype == "fp32" else torch.bfloat16
    largest = 8192 if setup.device.type == "cuda" else 2048

    def timed(n: int, repeats: int) -> float:
        a, b = (torch.randn(n, n, device=setup.device, dtype=dtype) for _ in range(2))
        a @ b  # warm-up
        start = setup.clock()
        for _ in range(repeats):
            a @ b
        return setup.clock() - start

    n, one_product = 256, timed(256, 1)
    while n < largest and one_product < 0.05:
        n *= 2
        one_product = timed(n, 1)
    repeats = max(1, round(seconds / max(one_product, 1e-6)))
    return 2 * n**3 * repeats / timed(n, repeats)
