"""Ray Data -> Ray Train (2 workers) -> DeepSpeed on a tiny model, through the real job entrypoint."""

import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import config_dict, synthetic_rows, write_parquet, write_stsb

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(480)]


def test_two_workers_on_uneven_shards_finish_and_export(tiny_backbone, tmp_path):
    raw = config_dict(tiny_backbone, tmp_path)
    big = write_parquet(tmp_path / "data" / "train-00000.parquet", synthetic_rows(200, seed=3))
    small = write_parquet(tmp_path / "data" / "train-00001.parquet", synthetic_rows(37, seed=4))
    stsb = os.path.relpath(write_stsb(tmp_path / "stsb.parquet"))  # relative: workers must get it resolved
    raw["data"].update(train=[str(big), str(small)], sampling="temperature", stsb=stsb)
    raw["train"].update(max_steps=12, eval_every=6, checkpoint_every=6, log_every=6)
    raw["scaling"] = {"num_workers": 2, "cpus_per_worker": 0.5}
    raw["deepspeed"] = {"zero_stage": 2}
    raw["finetune"] = {"strategy": "full"}
    raw["retain"] = {"method": "distill"}  # teacher vectors cached by Ray Data, streamed with the rows
    path = tmp_path / "ray.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, "RAY_DEDUP_LOGS": "0", "RAY_ADDRESS": "", "RAY_AUTH_MODE": "disabled"}
    completed = subprocess.run(
        [sys.executable, "-m", "jobs.train", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=420,
        env=env,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["steps"] == 12
    assert result["retention"]["final"]["spearman"] > 0.8  # STS-B probed on both ranks' halves (see write_stsb)
    assert result["metrics"]["topic"]["count"] + result["metrics"]["sentiment"]["count"] == 64
    manifest = json.loads(open(os.path.join(result["export_dir"], "mtl.json")).read())
    assert manifest["provenance"]["steps"] == 12
    assert sorted(manifest["provenance"]["train_files"]) == sorted([str(big), str(small)])
    output = completed.stdout + completed.stderr
    progress = [line for line in output.splitlines() if re.search(r"\bstep \d+/12 ", line)]
    assert len(progress) == 2, progress  # steps 6 and 12, each printed once (rank 0 only)
    assert "step 12/12" in progress[-1] and "NumPy array is not writable" not in output
    assert "teacher embeddings: computing 237 rows" in output and "loss/retain=" in progress[-1]
    assert "computed online" not in output


def test_a_killed_worker_is_replaced_and_a_one_pass_run_trains_every_row_once(tiny_backbone, tmp_path):
    raw = config_dict(tiny_backbone, tmp_path)
    files = [write_parquet(tmp_path / "data" / f"part-{i}.parquet", synthetic_rows(160, seed=10 + i)) for i in range(4)]
    raw["data"].update(train=[str(path) for path in files], length_window=4)
    # One epoch: 640 rows / (2 workers x 4 rows) = 80 steps.
    raw["train"] = {**raw["train"], "max_steps": None, "epochs": 1, "micro_batch_size": 4, "log_rows": True}
    raw["train"].update(eval_every=40, checkpoint_every=4, log_every=4)
    raw["scaling"] = {"num_workers": 2, "cpus_per_worker": 0.5}
    raw["run"]["max_failures"] = 1
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, "RAY_DEDUP_LOGS": "0", "RAY_ADDRESS": "", "RAY_AUTH_MODE": "disabled"}
    process = subprocess.Popen(
        [sys.executable, "-m", "jobs.train", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines, victim, killed = [], None, False
    for line in process.stdout:
        lines.append(line)
        found = re.search(r"worker rank 1/2 on node \w+ pid (\d+)", line)
        if found:
            victim = int(found.group(1))
        if not killed and victim and re.search(r"step (2[4-9]|[3-7]\d)/80", line):
            os.kill(victim, signal.SIGKILL)  # a worker dies mid-run, after some checkpoints
            killed = True
    process.wait(timeout=420)
    output = "".join(lines)
    assert killed, output[-3000:]
    assert process.returncode == 0, output[-5000:]
    resumed = [int(step) for step in re.findall(r"resumed from checkpoint at step (\d+)", output)]
    assert resumed and resumed[0] >= 8, output[-3000:]
    result = json.loads(output.strip().splitlines()[-1])
    assert result["steps"] == 80
    # The rows behind the final model: each once, give or take one micro batch per rank (the two ranks' shares of
    # the rest of the epoch after the restart are Ray Data's split, which need not match what each had left).
    seen, tasks = Counter(), Counter()
    for rank in (0, 1):
        log = (tmp_path / "runs" / "test" / "trained_rows" / f"rank-{rank}.jsonl").read_text().splitlines()
        entries = [json.loads(line) for line in log]
        assert [entry["step"] for entry in entries] == list(range(1, 81))
        seen.update(row for entry in entries for row in entry["row_id"])
        tasks.update(task for entry in entries for task in entry["task_id"])
    repeated = sum(count - 1 for count in seen.values())
    never = 640 - len(seen)
    print(f"rows trained twice: {repeated}, never: {never}")
    assert sum(seen.values()) == 640 and repeated <= 2 * 4 and never <= 2 * 4, (repeated, never)
    in_data = Counter(task for path in files for task in pq.read_table(path).column("task").to_pylist())
    assert abs(tasks[0] - in_data["sentiment"]) <= 8 and abs(tasks[1] - in_data["topic"]) <= 8, (tasks, in_data)
