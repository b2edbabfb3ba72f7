"""Who used the CPU during a time window: every process's CPU-seconds (and, for chosen processes, per thread name),
sampled from /proc by a background thread. Benchmarks use it to say where the time goes instead of guessing."""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil


def process_label(process: psutil.Process) -> str:
    """A stable, readable name: Ray's process title (`ray::RayTrainWorker...`), else the executable name."""
    try:
        cmdline = process.cmdline()
        if cmdline and cmdline[0].startswith("ray::"):
            return cmdline[0].split(" ")[0]
        return process.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "?"


def _thread_name(pid: int, tid: int) -> str:
    try:
        return Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
    except OSError:
        return "?"


@dataclass
class Sample:
    at: float
    busy: float  # machine-wide non-idle CPU-seconds so far
    processes: dict[int, tuple[str, float]] = field(default_factory=dict)  # pid -> (label, CPU-seconds)
    threads: dict[tuple[int, str], float] = field(default_factory=dict)  # (pid, thread name) -> CPU-seconds


class CpuSampler:
    """Samples every `interval` s until stopped; `detail(pid, label)` picks processes to break down by thread."""

    SELF = "this process"
    """The label of the process running the sampler (so it never merges with other `python` processes)."""

    def __init__(self, interval: float = 0.5, detail: Callable[[int, str], bool] = lambda pid, label: False):
        self.interval, self.detail = interval, detail
        self._me = os.getpid()
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self._sample())
            self._stop.wait(self.interval)
        self.samples.append(self._sample())

    def _sample(self) -> Sample:
        machine = psutil.cpu_times()
        idle = machine.idle + getattr(machine, "iowait", 0.0)
        guest = getattr(machine, "guest", 0.0) + getattr(machine, "guest_nice", 0.0)  # already inside user/nice
        sample = Sample(at=time.time(), busy=sum(machine) - idle - guest)
        for process in psutil.process_iter():
            try:
                # Re-read every time: a Ray worker's title changes with the task it runs.
                label = self.SELF if process.pid == self._me else process_label(process)
                times = process.cpu_times()
                sample.processes[process.pid] = (label, times.user + times.system)
                if self.detail(process.pid, label):
                    for thread in process.threads():
                        key = (process.pid, _thread_name(process.pid, thread.id))
                        sample.threads[key] = sample.threads.get(key, 0.0) + thread.user_time + thread.system_time
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return sample

    def breakdown(self, start: float, end: float) -> dict:
        """CPU-seconds per process label and per detailed thread name between the samples enclosing [start, end].

        Each interval's CPU goes to the label a process had at the interval's end (Ray workers change title per task).
        """
        first = max((i for i, s in enumerate(self.samples) if s.at <= start), default=0)
        last = min((i for i, s in enumerate(self.samples) if s.at >= end), default=len(self.samples) - 1)
        before, after = self.samples[first], self.samples[last]
        seconds = after.at - before.at
        by_label: dict[str, float] = defaultdict(float)
        by_thread: dict[str, float] = defaultdict(float)
        for earlier, later in zip(self.samples[first:last], self.samples[first + 1 : last + 1], strict=True):
            for pid, (label, cpu) in later.processes.items():
                by_label[label] += cpu - earlier.processes.get(pid, (label, 0.0))[1]
            for (pid, name), cpu in later.threads.items():
                by_thread[name] += cpu - earlier.threads.get((pid, name), 0.0)
        cores = os.cpu_count() or 1
        return {
            "window_s": seconds,
            "cores": cores,
            "machine_busy_fraction": (after.busy - before.busy) / max(seconds * cores, 1e-9),
            "processes": dict(sorted(((k, v) for k, v in by_label.items() if v > 0), key=lambda kv: -kv[1])),
            "threads": dict(sorted(((k, v) for k, v in by_thread.items() if v > 0), key=lambda kv: -kv[1])),
        }


def format_breakdown(title: str, usage: dict, top: int = 6) -> str:
    capacity = usage["window_s"] * usage["cores"]
    lines = [
        f"{title}: {usage['window_s']:.1f} s window x {usage['cores']} cores, "
        f"machine busy {usage['machine_busy_fraction']:.0%}"
    ]
    for label, cpu in list(usage["processes"].items())[:top]:
        lines.append(f"  {cpu / capacity:6.1%}  {cpu:7.1f} CPU-s  {label}")
    if usage["threads"]:
        lines.append("  threads of the detailed process(es):")
        for name, cpu in list(usage["threads"].items())[:top]:
            lines.append(f"    {cpu / capacity:6.1%}  {cpu:7.1f} CPU-s  {name}")
    return "\n".join(lines)
