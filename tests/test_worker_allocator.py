"""The training workers' allocator: Ray's bundled jemalloc that keeps freed pages, chosen at process start."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mtl.config import ConfigError, ScalingConfig
from mtl.train import worker_allocator
from mtl.train.worker_allocator import JEMALLOC_CONF, bundled_jemalloc, worker_runtime_env

# A step's pattern: a 64 MB tensor allocated, written and freed again and again; the child prints its minor faults.
CHURN = """
import json, resource, torch
for _ in range(3):
    torch.ones(16 * 1024 * 1024)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.ones(16 * 1024 * 1024)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"faults": faults, "jemalloc": "jemalloc" in open("/proc/self/maps").read()}))
"""


def churn(env_vars: dict) -> dict:
    env = {key: value for key, value in os.environ.items() if key not in ("LD_PRELOAD", "MALLOC_CONF")}
    done = subprocess.run([sys.executable, "-c", CHURN], env={**env, **env_vars}, capture_output=True, text=True,
                          check=True, timeout=120)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_system_means_no_runtime_env():
    assert worker_runtime_env(ScalingConfig(allocator="system")) == {}


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
    # glibc maps a 64 MB tensor afresh each time (16,384 pages, faulted in when written); jemalloc reuses its pages.
    assert system["faults"] > 20 * 10_000, system
    assert jemalloc["faults"] < system["faults"] / 20, (jemalloc, system)
