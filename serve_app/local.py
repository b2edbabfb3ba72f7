"""Run the shipped Serve config in this process's Ray (used by `make demo`, the benchmarks, `make fuzz`, tests).

It deploys through the same declarative path as `serve run` / `serve deploy`, so in-place updates of a
deployment's `user_config` behave exactly as they do on a cluster.
"""

from __future__ import annotations

import asyncio
import copy
import os
import socket
import time
from pathlib import Path

import requests
import yaml

SHIPPED_CONFIG = Path(__file__).resolve().parent / "serve_config.yaml"
APP_NAME = "mtl"
# The request path the shipped config is measured with (docs/serving.md, jobs.bench.serve): Serve's throughput-optimised
# mode (requests go straight to the ingress replicas, gRPC between deployments) behind its HAProxy ingress. Ray
# reads these when its processes start, so they are set here, in cluster/local.sh, `make serve` and the RayService.
SERVE_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def shipped_config(model_dir: str | Path, port: int, **args) -> dict:
    """The shipped config with the model, the port and any builder args changed."""
    config = copy.deepcopy(yaml.safe_load(SHIPPED_CONFIG.read_text()))
    config["http_options"]["port"] = port
    config["applications"][0]["args"].update({"model_dir": str(model_dir), **args})
    return config


class LocalServe:
    def __init__(self, model_dir: str | Path, port: int | None = None, num_cpus: int | None = None, **args):
        import ray
        from ray import serve

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # loopback only; see docs/cluster.md on cluster auth
        for key, value in SERVE_ENV.items():
            os.environ.setdefault(key, value)
        if not ray.is_initialized():
            ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}})
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        serve.start(http_options={"host": "127.0.0.1", "port": self.port})
        self.config = shipped_config(model_dir, self.port, **args)
        self.deploy(self.config)

    def deploy(self, config: dict, timeout: float = 240, wait_healthy: bool = True) -> None:
        """Deploy `config`; wait (up to `timeout`, not Serve's fixed 60 s) until the app is RUNNING and answers
        /healthz. `wait_healthy=False`: return once the controller has the config."""
        from ray import serve
        from ray.serve.context import _get_global_client
        from ray.serve.schema import ServeDeploySchema

        self.config = config
        _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config), _blocking=False)
        if not wait_healthy:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            app = serve.status().applications.get(APP_NAME)
            if app is not None and app.status == "RUNNING":
                try:
                    if requests.get(f"{self.url}/healthz", timeout=5).status_code == 200:
                        return
                except requests.ConnectionError:
                    pass
            time.sleep(0.5)
        raise TimeoutError(f"app {APP_NAME!r} not running and healthy after {timeout} s: {serve.status()}")

    def handle(self, deployment: str):
        from ray import serve

        return serve.get_deployment_handle(deployment, app_name=APP_NAME)

    def call(self, deployment: str, method: str = "__call__", *args):
        """One call on a deployment from synchronous code (handles need an event loop in throughput-optimised mode)."""

        async def once():
            return await getattr(self.handle(deployment), method).remote(*args)

        return asyncio.run(once())

    def close(self, shutdown_ray: bool = True) -> None:
        import ray
        from ray import serve

        serve.shutdown()
        if shutdown_ray:
            ray.shutdown()
