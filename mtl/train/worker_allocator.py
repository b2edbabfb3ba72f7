"""The training workers' memory allocator: Ray's bundled jemalloc, set to keep the pages it frees.

With glibc's malloc a training step on a CPU node allocates its large tensors (the word-embedding table's gradient,
DeepSpeed's flat buffers: tens of MB each) with fresh `mmap`s and hands them back at the end of the step, so the next
step page-faults all of them in again: ~34,000 minor faults a step for MiniLM at 64 rows, 30-40 % of the step
(`python -m jobs.bench.train_engine --allocators system,jemalloc` prints both). jemalloc that never purges
(`JEMALLOC_CONF`) reuses those pages instead. Ray's Linux wheels ship `ray/core/libjemalloc.so` for their own
processes, so nothing new is installed; an allocator can only be chosen when a process starts, so it reaches the
workers as `LD_PRELOAD` in their runtime env (`RunConfig.worker_runtime_env`), not in the trainer's config.
"""

from __future__ import annotations

import os
from pathlib import Path

from mtl.config import ConfigError, ScalingConfig

# Never return freed pages to the OS (dirty and muzzy decay off) and keep large allocations in the ordinary arenas
# (no oversize arena, which purges at once): a worker's footprint is its peak, and steady-state steps fault nothing.
JEMALLOC_CONF = "oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1"
ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")  # names a preloaded allocator library has


def bundled_jemalloc() -> Path | None:
    """Ray's own jemalloc (Linux wheels), or None where this Ray build has none."""
    import ray

    library = Path(ray.__file__).parent / "core" / "libjemalloc.so"
    return library if library.is_file() else None


def worker_runtime_env(scaling: ScalingConfig) -> dict:
    """The runtime env for the training workers: `LD_PRELOAD` of jemalloc and its `MALLOC_CONF`, or {} for the
    system allocator. `auto` leaves GPU workers and a job that preloads an allocator of its own as they are; where
    this Ray has no jemalloc `auto` is the system's (the workers' start-up line says which, `allocator_in_use`) and
    `jemalloc` an error."""
    preloaded = os.environ.get("LD_PRELOAD", "")
    if scaling.allocator == "system":
        return {}
    if scaling.allocator == "auto" and (scaling.use_gpu or any(name in preloaded for name in ALLOCATORS)):
        return {}
    library = bundled_jemalloc()
    if library is None:
        if scaling.allocator == "jemalloc":
            raise ConfigError(
                "scaling.allocator=jemalloc: this Ray installation ships no core/libjemalloc.so (Ray's Linux wheels "
                "do); set scaling.allocator to auto or system"
            )
        return {}
    preload = " ".join(filter(None, [str(library), preloaded]))
    return {"env_vars": {"LD_PRELOAD": preload, "MALLOC_CONF": JEMALLOC_CONF}}


def allocator_in_use() -> str:
    """What this process allocates with, for its start-up line: the preloaded allocator library it has mapped
    (`jemalloc (<MALLOC_CONF>)`), `system malloc`, or a warning when `LD_PRELOAD` named jemalloc but it did not load
    (a path that does not exist on this node)."""
    try:
        mapped = Path("/proc/self/maps").read_text()
    except OSError:  # not Linux
        mapped = ""
    for name in ALLOCATORS:
        if f"lib{name}" in mapped:
            return f"{name} ({os.environ.get('MALLOC_CONF', 'default settings')})" if name == "jemalloc" else name
    if "jemalloc" in os.environ.get("LD_PRELOAD", ""):
        return f"system malloc (WARNING: LD_PRELOAD={os.environ['LD_PRELOAD']} did not load here)"
    return "system malloc"


def keep_from_children() -> None:
    """Drop the preload from this process's environment once it is loaded, so the processes a worker starts
    (DeepSpeed's and torch.compile's compilers) keep the system allocator."""
    if "jemalloc" in os.environ.get("LD_PRELOAD", ""):
        os.environ.pop("LD_PRELOAD")
        os.environ.pop("MALLOC_CONF", None)
