"""How train.py was started: a launch asked for N processes gets N of them or fails, and a worker does not outlive
the `accelerate launch` that started it."""

from __future__ import annotations

import ctypes
import os
import signal
from pathlib import Path

from transformers import TrainingArguments

MULTI_PROCESS_CPU = ("torchrun --nproc_per_node N train.py ... --use_cpu true, or accelerate launch --config_file "
                     "configs/accelerate/cpu_ddp.yaml --num_processes N train.py ... --use_cpu true")


def check_process_count(training_args: TrainingArguments) -> None:
    """Refuse a launch whose processes would not form one run: `accelerate launch --cpu --num_processes N` (N > 1)
    starts one process (accelerate starts several CPU processes only through MPI) and says nothing, and processes
    started by torchrun that do not join one process group would each train alone into the same folder."""
    started = int(os.environ.get("WORLD_SIZE", "1"))
    if started > 1 and training_args.world_size != started:
        raise RuntimeError(f"{started} processes were started (WORLD_SIZE={started}), but they would each train alone "
                           f"on {training_args.device.type} instead of as one run of {started} processes; on CPUs "
                           f"pass --use_cpu true (gloo): {MULTI_PROCESS_CPU}")
    asked_for_more = "ACCELERATE_USE_CPU" in os.environ and "MASTER_ADDR" in os.environ  # accelerate's one-process
    if "WORLD_SIZE" not in os.environ and asked_for_more and os.environ["ACCELERATE_USE_CPU"].lower() == "true":
        raise RuntimeError(f"accelerate launch was asked for more than one CPU process (it set MASTER_ADDR="
                           f"{os.environ['MASTER_ADDR']}), but it started only this one: it would train alone at a "
                           f"smaller global batch. accelerate starts several CPU processes only through MPI "
                           f"(--mpirun_hostfile); use {MULTI_PROCESS_CPU}")


def end_with_launcher() -> None:
    """Under `accelerate launch` with one process, the launcher waits on train.py but does not pass a SIGTERM on to
    it: killed, it would leave train.py training and writing the output folder. So the kernel is asked to send
    train.py a SIGTERM when its launcher ends (Linux; torchrun forwards signals itself)."""
    launcher = os.getppid()
    try:
        command = Path(f"/proc/{launcher}/cmdline").read_bytes().split(b"\0")
    except OSError:  # not Linux
        return
    if not any(part.endswith(b"accelerate") or b"accelerate.commands.launch" in part for part in command[:3]):
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != launcher:  # it ended before the request was made
        os.kill(os.getpid(), signal.SIGTERM)
