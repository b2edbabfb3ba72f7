"""cluster/: every manifest parses and matches its schema; the rendered files and the Serve config have one source."""

import functools
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from cluster.render import main as render
from cluster.render import serve_config_for_kubernetes

CLUSTER = Path("cluster")
CRDS = Path("../shared/kuberay-crds")
MANIFESTS = sorted(CLUSTER.glob("kuberay/*.yaml"))
RAY_MANIFESTS = [path for path in MANIFESTS if yaml.safe_load(path.read_text())["apiVersion"] == "ray.io/v1"]
RAY_SCHEMA = Path(jsonschema.__file__).parents[1] / "ray" / "autoscaler" / "ray-schema.json"


def closed(schema: dict) -> dict:
    """Kubernetes rejects unknown fields: make every object with `properties` refuse extra keys (typos)."""
    if isinstance(schema, dict):
        schema = {key: closed(value) for key, value in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            if not schema.get("x-kubernetes-preserve-unknown-fields"):
                schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [closed(item) for item in schema]
    return schema


@functools.cache
def crd_schema(kind: str) -> dict:
    crd = yaml.safe_load((CRDS / f"ray.io_{kind.lower()}s.yaml").read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return closed(version["schema"]["openAPIV3Schema"])


def test_every_file_in_cluster_parses():
    files = [p for p in CLUSTER.rglob("*") if p.suffix in {".yaml", ".yml", ".json"}]
    assert len(files) >= 6
    for path in files:
        document = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
        assert isinstance(document, dict), path


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_manifest_has_the_fields_its_kind_requires(path):
    manifest = yaml.safe_load(path.read_text())
    assert manifest["metadata"]["name"]
    kind = manifest["kind"]
    spec = manifest["spec"]
    if kind == "PersistentVolumeClaim":
        assert manifest["apiVersion"] == "v1" and "ReadWriteMany" in spec["accessModes"]
        return
    assert manifest["apiVersion"] == "ray.io/v1"
    nested = {"RayCluster": spec, "RayJob": spec.get("rayClusterSpec"), "RayService": spec.get("rayClusterConfig")}
    cluster = nested[kind]
    assert cluster["headGroupSpec"]["template"]["spec"]["containers"]
    groups = {group["groupName"]: group for group in cluster["workerGroupSpecs"]}
    assert {"cpu", "gpu"} <= set(groups)
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu["nvidia.com/gpu"] == "1"
    if kind == "RayJob":
        assert spec["entrypoint"].startswith("python -m jobs.")
        assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
        assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]["HF_HUB_OFFLINE"] == "1"
    if kind == "RayService":
        assert yaml.safe_load(spec["serveConfigV2"])["applications"][0]["import_path"] == "serve_app.app:build_app"


@pytest.mark.skipif(not CRDS.is_dir(), reason="../shared/kuberay-crds not present")
@pytest.mark.parametrize("path", RAY_MANIFESTS, ids=[p.name for p in RAY_MANIFESTS])
def test_manifest_validates_against_the_kuberay_crd(path):
    manifest = yaml.safe_load(path.read_text())
    jsonschema.validate(manifest, crd_schema(manifest["kind"]))


@pytest.mark.skipif(not CRDS.is_dir(), reason="../shared/kuberay-crds not present")
def test_the_crd_check_catches_a_typo():
    manifest = yaml.safe_load((CLUSTER / "kuberay" / "raycluster.yaml").read_text())
    manifest["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3
    with pytest.raises(jsonschema.ValidationError, match="maxReplica"):
        jsonschema.validate(manifest, crd_schema("RayCluster"))


def test_rendered_manifests_are_up_to_date():
    assert render(["--check"]) == 0, "run `python cluster/render.py`"


def test_rayservice_serves_the_shipped_serve_config():
    service = yaml.safe_load((CLUSTER / "kuberay" / "rayservice.yaml").read_text())
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    shipped = yaml.safe_load(Path("serve_app/serve_config.yaml").read_text())
    assert embedded == serve_config_for_kubernetes()
    shipped["http_options"]["host"] = "0.0.0.0"  # the only difference: reachable through the pod's Service
    assert embedded == shipped


def test_cluster_launcher_config_matches_rays_schema():
    config = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    jsonschema.validate(config, json.loads(RAY_SCHEMA.read_text()))
    types = config["available_node_types"]
    assert {"head", "cpu_worker", "gpu_worker"} <= set(types)
    assert types["gpu_worker"]["docker"]["worker_image"].endswith("-cuda")
    assert all(key in types["cpu_worker"] for key in ("min_workers", "max_workers"))


def test_dockerfile_installs_the_pinned_constraints_with_a_cpu_and_cuda_variant():
    text = (CLUSTER / "Dockerfile").read_text()
    assert "ARG VARIANT=cpu" in text and "-c constraints.txt" in text
    assert "rayproject/ray:2.60.0-py311-${VARIANT}" in text
