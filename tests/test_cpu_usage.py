import os
import time

from jobs.bench.cpu_usage import CpuSampler, format_breakdown, process_label


def test_busy_process_gets_its_cpu_and_its_threads_are_broken_down():
    me = os.getpid()
    label = CpuSampler.SELF
    sampler = CpuSampler(interval=0.1, detail=lambda pid, _: pid == me)
    with sampler:
        time.sleep(0.25)
        start = time.time()
        while time.time() - start < 1.0:  # one core busy in this process
            sum(range(1000))
        end = time.time()
        time.sleep(0.25)
    usage = sampler.breakdown(start, end)
    assert 1.0 <= usage["window_s"] < 1.6
    assert usage["processes"][label] >= 0.6 * usage["window_s"]
    assert sum(usage["threads"].values()) >= 0.6 * usage["window_s"]
    assert label in format_breakdown("busy", usage)


def test_ray_worker_processes_are_named_by_their_title():
    class Fake:
        def cmdline(self):
            return ["ray::RayTrainWorker.train_fn", "extra"]

        def name(self):
            return "python"

    assert process_label(Fake()) == "ray::RayTrainWorker.train_fn"
