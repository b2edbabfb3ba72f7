"""The training workers' allocator: Ray's bundled jemalloc that keeps freed pages, chosen at process start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mtl.config import ConfigError, ScalingConfig
from mtl.train import worker_allocator
from mtl.train.worker_allocator import JEMALLOC_CONF, bundled_jemalloc, worker_runtime_env

# A step's pattern: a 64 MB tensor allocated, written and freed again and again; the child prints its minor faults.
CHURN = """
import json, resource, torch
from mtl.train.worker_allocator import allocator_in_use
for _ in range(3):
    torch.ones(16 * 1024 * 1024)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.ones(16 * 1024 * 1024)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
mapped = open("/proc/self/maps").read()
print(json.dumps({"faults": faults, "jemalloc": "jemalloc" in mapped, "says": allocator_in_use()}))
"""


def churn(env_vars: dict) -> dict:
    env = {key: value for key, value in os.environ.items() if key not in ("LD_PRELOAD", "MALLOC_CONF")}
    done = subprocess.run([sys.executable, "-c", CHURN], env={**env, **env_vars}, capture_output=True, text=True,
                          check=True, timeout=120)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_system_means_no_runtime_env():
    assert worker_runtime_env(ScalingConfig(allocator="system")) == {}


def test_auto_leaves_gpu_workers_and_a_jobs_own_allocator_alone(monkeypatch):
    assert worker_runtime_env(ScalingConfig(use_gpu=True)) == {}
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
    assert worker_runtime_env(ScalingConfig()) == {}


@pytest.mark.skipif(bundled_jemalloc() is None, reason="this Ray build ships no libjemalloc.so")
def test_auto_preloads_rays_jemalloc_before_what_the_job_preloads(monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "/opt/site/libmine.so")
    env = worker_runtime_env(ScalingConfig())["env_vars"]
    assert env["LD_PRELOAD"] == f"{bundled_jemalloc()} /opt/site/libmine.so"
    assert env["MALLOC_CONF"] == JEMALLOC_CONF


def test_jemalloc_where_ray_has_none_is_a_config_error_and_auto_falls_back(monkeypatch):
    monkeypatch.setattr(worker_allocator, "bundled_jemalloc", lambda: None)
    with pytest.raises(ConfigError, match="scaling.allocator=jemalloc"):
        worker_runtime_env(ScalingConfig(allocator="jemalloc"))
    assert worker_runtime_env(ScalingConfig(allocator="auto")) == {}


@pytest.mark.skipif(bundled_jemalloc() is None or not sys.platform.startswith("linux"), reason="Linux, Ray's jemalloc")
def test_the_workers_env_loads_jemalloc_and_stops_the_page_faults_of_a_freed_large_tensor():
    system = churn({})
    jemalloc = churn(worker_runtime_env(ScalingConfig(allocator="jemalloc"))["env_vars"])
    assert not system["jemalloc"] and jemalloc["jemalloc"]
    assert system["says"] == "system malloc" and jemalloc["says"] == f"jemalloc ({JEMALLOC_CONF})"
    # glibc maps a 64 MB tensor afresh each time and faults its pages in when written; jemalloc reuses its pages.
    # (With transparent huge pages always on, glibc's faults are 2 MB ones: a few per tensor, nothing to compare.)
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not (thp.is_file() and "[always]" in thp.read_text()):
        assert system["faults"] > 20 * 10_000, system
        assert jemalloc["faults"] < system["faults"] / 20, (jemalloc, system)


def test_a_preload_that_did_not_load_is_named_in_the_start_up_line():
    says = churn({"LD_PRELOAD": "/nonexistent/libjemalloc.so"})["says"]
    assert says.startswith("system malloc (WARNING: LD_PRELOAD=/nonexistent/libjemalloc.so did not load")


def test_plan_training_refuses_jemalloc_where_ray_has_none_before_ray_starts(make_config, monkeypatch):
    from mtl.train.preflight import plan_training

    monkeypatch.setattr(worker_allocator, "bundled_jemalloc", lambda: None)
    with pytest.raises(ConfigError, match="scaling.allocator=jemalloc"):
        plan_training(make_config(scaling={"allocator": "jemalloc"}))
