"""The deployment files: node image, cluster launcher config, KubeRay manifest, README commands."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import ray
import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
IMAGE = "<registry>/aop:0.1.0"
WEIGHTS = ["/weights/cellpose", "/weights/keras", "/weights/bioimageio", "/weights/unet3d"]


def _schema() -> dict:
    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


def test_node_image_is_rays_official_image_with_aop_all_and_weight_volumes():
    text = (CLUSTER / "Dockerfile").read_text()
    base = re.search(r"^ARG RAY_IMAGE=(\S+)$", text, re.M).group(1)
    assert base.startswith(f"rayproject/ray:{ray.__version__}-py311")  # the driver's Ray
    assert re.search(r"^FROM \$\{RAY_IMAGE\}$", text, re.M)
    assert re.search(r'pip install .*"\.\[all\]"', text)
    volumes = json.loads(re.search(r"^VOLUME (\[.*\])$", text, re.M).group(1))
    assert volumes == WEIGHTS
    assert "CELLPOSE_LOCAL_MODELS_PATH=/weights/cellpose" in text
    assert "KERAS_HOME=/weights/keras" in text


def test_launcher_config_follows_rays_schema_and_uses_the_image():
    config = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    jsonschema.validate(config, _schema())
    assert config["docker"]["image"] == IMAGE
    mounts = " ".join(config["docker"]["run_options"])
    for folder in WEIGHTS:
        assert f":{folder}:ro" in mounts
    assert "RAY_AUTH_MODE=token" in mounts and "RAY_AUTH_TOKEN_PATH=/shared/" in mounts
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert any(t["resources"].get("GPU", 0) >= 1 for t in types.values())
    assert sum(t.get("max_workers", 0) for t in types.values()) <= config["max_workers"] + 1
    head = " ".join(config["head_start_ray_commands"])
    assert "--serve-artifacts" in head and "--autoscaling-config" in head


def test_launcher_schema_check_is_not_vacuous():
    config = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    config["docker"]["imagee"] = config["docker"].pop("image")  # a typo
    try:
        jsonschema.validate(config, _schema())
    except jsonschema.ValidationError as exc:
        assert "imagee" in exc.message
    else:
        raise AssertionError("the schema accepted an unknown key")


def _containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def test_kuberay_manifest_is_a_raycluster_with_gpu_workers_on_the_image():
    manifest = yaml.safe_load((CLUSTER / "kuberay-raycluster.yaml").read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayCluster"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", manifest["metadata"]["name"])
    spec = manifest["spec"]
    assert spec["rayVersion"] == ray.__version__
    head = spec["headGroupSpec"]
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())
    groups = spec["workerGroupSpecs"]
    assert groups and len({g["groupName"] for g in groups}) == len(groups)
    gpu_groups = []
    for group in [head, *groups]:
        (container,) = _containers(group)
        assert container["image"] == IMAGE
        names = {v["name"] for v in group["template"]["spec"]["volumes"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert {m["name"] for m in mounts.values()} <= names
        assert "/shared" in mounts and all(mounts[w]["readOnly"] for w in WEIGHTS)
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token" and "RAY_AUTH_TOKEN" in env
        limits = container["resources"]["limits"]
        if int(limits.get("nvidia.com/gpu", 0)) >= 1:
            gpu_groups.append(group)
    assert gpu_groups and all("groupName" in g for g in gpu_groups)  # GPU worker groups only
    for group in groups:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    ports = {p["name"]: p["containerPort"] for p in _containers(head)[0]["ports"]}
    assert ports == {"gcs": 6379, "dashboard": 8265, "client": 10001}
