"""Start Ray + Serve in this process and deploy the shipped `serve_config.yaml` the way `serve deploy` does."""

from __future__ import annotations

import copy
import os
import socket
import time
from pathlib import Path

import requests
import yaml

SHIPPED_CONFIG = Path("serve_app/serve_config.yaml")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def shipped_config(model_dir: Path, port: int, **args) -> dict:
    """The shipped config with only the model, the port and (for a shared 2-core box) CPU sizes changed."""
    config = copy.deepcopy(yaml.safe_load(SHIPPED_CONFIG.read_text()))
    config["http_options"]["port"] = port
    app = config["applications"][0]
    app["args"].update({"model_dir": str(model_dir), "encoder_cpus": 0.5, **args})
    return config


class ServeHarness:
    def __init__(self, model_dir: Path):
        import ray
        from ray import serve

        os.environ["RAY_AUTH_MODE"] = "disabled"
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}})
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        serve.start(http_options={"host": "127.0.0.1", "port": self.port})
        self.model_dir = model_dir
        self.config = shipped_config(model_dir, self.port)
        self.deploy(self.config)

    def deploy(self, config: dict) -> None:
        from ray.serve.context import _get_global_client
        from ray.serve.schema import ServeDeploySchema

        self.config = config
        _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config), _blocking=True)
        self.wait_ready()

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/healthz", timeout=5).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{self.url}/healthz not ready after {timeout} s")

    def handle(self, deployment: str):
        from ray import serve

        return serve.get_deployment_handle(deployment, app_name="mtl")

    def close(self) -> None:
        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()
