"""cluster/local.sh: a 2-node local cluster, `ray job submit` for training (workers on both nodes) and embedding."""

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from cluster.render import ENV as render_env
from serve_app.local import free_port
from tests.conftest import config_dict, synthetic_rows, write_parquet

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[1]


def free_base_port(span: int) -> int:
    """A port p with p..p+span-1 all free (local.sh uses neighbours of the GCS and dashboard ports)."""
    for _ in range(50):
        base = free_port()
        if base + span < 65535 and all(_is_free(base + i) for i in range(span)):
            return base
    raise RuntimeError("no free port range")


def _is_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def run(command: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert completed.returncode == 0, f"{command}\n{completed.stdout[-4000:]}\n{completed.stderr[-4000:]}"
    return completed


def test_two_node_cluster_runs_training_across_nodes_then_embedding(tiny_backbone, tiny_export, tmp_path):
    state = tempfile.mkdtemp(prefix="mtlc-", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {
        **os.environ,
        "MTL_LOCAL_CLUSTER_DIR": state,
        "MTL_GCS_PORT": str(free_base_port(2)),
        "MTL_DASHBOARD_PORT": str(free_base_port(3)),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    env.pop("RAY_ADDRESS", None)
    run(["cluster/local.sh", "up"], env, 120)
    try:
        exports = run(["cluster/local.sh", "env"], env, 10).stdout.split()[1:]
        client_env = {**env, **dict(item.split("=", 1) for item in exports)}

        raw = config_dict(tiny_backbone, tmp_path)
        raw["train"].update(max_steps=6, eval_every=3, checkpoint_every=3, log_every=3)
        raw["scaling"] = {"num_workers": 2, "cpus_per_worker": 0.5, "placement_strategy": "STRICT_SPREAD"}
        config = tmp_path / "cluster.yaml"
        config.write_text(yaml.safe_dump(raw, sort_keys=False))
        # Exactly the runtime env the rendered RayJob manifests carry: the driver must not clash with it.
        runtime_env = json.dumps(yaml.safe_load(render_env))
        submit = ["ray", "job", "submit", "--runtime-env-json", runtime_env, "--", sys.executable, "-m"]
        trained = run([*submit, "jobs.train", "--config", str(config)], client_env, 600)
        output = trained.stdout + trained.stderr
        nodes = set(re.findall(r"worker rank \d/2 on node ([0-9a-f]+)", output))
        assert len(nodes) == 2, output[-4000:]
        result = json_line(output, '"run_dir"')
        assert result["steps"] == 6

        texts = write_parquet(tmp_path / "texts" / "part-0.parquet", {"text": synthetic_rows(40)["text"]})
        embed = ["jobs.embed", "--model", str(tiny_export), "--input", str(texts), "--output", str(tmp_path / "emb")]
        embedded = run([*submit, *embed], client_env, 300)
        summary = json_line(embedded.stdout, '"rows_out"')
        assert summary["rows_out"] == 40
    finally:
        run(["cluster/local.sh", "down"], env, 120)
    assert processes_mentioning(state) == [], "Ray processes left behind"


def json_line(output: str, key: str) -> dict:
    """The job's JSON summary line (the log stream may put terminal escapes before it)."""
    line = next(line for line in reversed(output.splitlines()) if key in line)
    return json.loads(line[line.index("{") :])


def processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                found.append(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200])
        except OSError:
            pass
    return found
