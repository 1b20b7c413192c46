"""Offline checks of the deployment: terraform fmt, the structure and security of terraform/ (python-hcl2),
checkov, hadolint, the cloudbuild.yaml schema, and a real build and run of the image with podman.

The tools come from scripts/test.sh (.venv-infra for checkov, hadolint and check-jsonschema; Debian's
podman); where one is missing the check says so and skips."""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest

from tests.infra_checks import all_problems

ROOT = pathlib.Path(__file__).resolve().parents[1]
TERRAFORM = ROOT / "terraform"
INFRA_BIN = ROOT / ".venv-infra" / "bin"
BASE_IMAGE = "docker.io/library/python:3.11-slim-bookworm"  # made by container-check.sh, and kept as a cache
CHECKOV_ENV = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CKV_SKIP_PACKAGE_UPDATE_CHECK": "TRUE"}


def tool(name: str) -> str:
    path = INFRA_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (scripts/test.sh installs it into .venv-infra)")
    return found


def mutated(tmp_path: pathlib.Path, filename: str, old: str, new: str) -> pathlib.Path:
    copy = tmp_path / "terraform"
    shutil.copytree(TERRAFORM, copy)
    text = (copy / filename).read_text()
    assert old in text, f"{old!r} is not in {filename}"
    (copy / filename).write_text(text.replace(old, new))
    return copy


def test_terraform_is_formatted():
    if shutil.which("terraform") is None:
        pytest.skip("terraform is not installed")
    result = subprocess.run(["terraform", "fmt", "-check", "-recursive", str(TERRAFORM)], capture_output=True, text=True)
    assert result.returncode == 0, f"not formatted: {result.stdout}"


def test_the_terraform_pieces_exist_reference_each_other_and_are_secure():
    assert all_problems(TERRAFORM) == []


@pytest.mark.parametrize("filename, old, new, problem", [
    ("redis.tf", "auth_enabled            = true", "auth_enabled            = false", "without AUTH"),
    ("redis.tf", '"SERVER_AUTHENTICATION"', '"DISABLED"', "in-transit encryption"),
    ("redis.tf", '"noeviction"', '"allkeys-lru"', "evict"),
    ("network.tf", 'ports    = ["4002", "8082"]', 'ports    = ["4002", "8082", "22"]', None),
    ("network.tf", 'protocol = "udp"\n    ports    = ["4001"]', 'protocol = "all"', "opens every port"),
    ("lb.tf", "google_compute_region_network_endpoint_group.rendezvous.id", "google_compute_region_network_endpoint_group.renamed.id", "not defined"),
    ("lb.tf", "security_policy       = google_compute_security_policy.edge.id\n  backend {\n    group = google_compute_region",
     "backend {\n    group = google_compute_region", "no Cloud Armor"),
    ("run.tf", '"INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER"', '"INGRESS_TRAFFIC_ALL"', "around the load balancer"),
    ("armor.tf", "cve-canary", "xss-v33-stable", "cve-canary"),
    ("armor.tf", "startsWith('/metrics')", "startsWith('/status')", "/metrics"),
    ("run.tf", 'name  = "RELAY_PEER_IDS"', 'name  = "RELAY_IDS"', "RELAY_PEER_IDS"),
    # redis_mode cluster
    ("redis_cluster.tf", '"AUTH_MODE_IAM_AUTH"', '"AUTH_MODE_DISABLED"', "Memorystore Cluster without AUTH"),
    ("redis_cluster.tf", '"TRANSIT_ENCRYPTION_MODE_SERVER_AUTHENTICATION"', '"TRANSIT_ENCRYPTION_MODE_DISABLED"',
     "Memorystore Cluster without in-transit encryption"),
    ("redis_cluster.tf", "psc_configs {\n    network = google_compute_network.vpc.id",
     'psc_configs {\n    network = "projects/other/global/networks/default"', "not on the rendezvous's VPC"),
    ("redis_cluster.tf", '"gcp-memorystore-redis"', '"google-cloud-sql"', "no service connection policy"),
    ("redis_cluster.tf", "count         = local.redis_cluster ? 1 : 0\n  name          = \"holepunch-store\"",
     "name          = \"holepunch-store\"", "not made exactly when redis_mode is cluster"),
    ("redis.tf", "count                   = local.redis_cluster ? 0 : 1", "count                   = 1",
     "instance is not made exactly when redis_mode is instance"),
    ("run.tf", 'value = local.redis_cluster ? "true" : "false"', 'value = "false"', "REDIS_CLUSTER does not follow"),
    ("run.tf", 'name  = "REDIS_IAM_AUTH"\n        value = local.redis_cluster ? "true" : "false"',
     'name  = "REDIS_IAM_AUTH"\n        value = "false"', "REDIS_IAM_AUTH does not follow"),
    ("secrets.tf", "? \"rediss://${google_redis_cluster.store[0].discovery_endpoints[0].address}",
     "? \"rediss://${google_redis_cluster.store[0].psc_connections[0].address}", "redis_url secret is not the cluster's"),
    ("iam.tf", 'member  = "serviceAccount:${google_service_account.rendezvous.email}"\n  condition',
     'member  = "serviceAccount:${google_service_account.worker.email}"\n  condition', "may not connect"),
    ("iam.tf", 'expression  = "resource.name == \\"${google_redis_cluster.store[0].id}\\""',
     'expression  = "resource.name.startsWith(\\"projects/\\")"', "on every cluster of the project"),
])
def test_a_broken_reference_or_an_insecure_setting_is_caught(tmp_path, filename, old, new, problem):
    problems = all_problems(mutated(tmp_path, filename, old, new))
    if problem is None:  # a port open only to the load balancer's ranges is not a problem
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


def test_a_firewall_open_to_everything_is_caught(tmp_path):
    tree = mutated(tmp_path, "network.tf", 'source_ranges = local.google_lb_ranges', 'source_ranges = ["0.0.0.0/0"]')
    assert any("to the whole internet" in p for p in all_problems(tree))


def checkov(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("checkov"), *args, "--skip-download", "--compact", "--quiet"], capture_output=True,
                          text=True, env=CHECKOV_ENV, timeout=300)


def test_checkov_passes_on_terraform_and_the_dockerfile_with_every_skip_justified():
    result = checkov("-d", str(TERRAFORM), "--framework", "terraform")
    assert result.returncode == 0, result.stdout[-3000:]
    result = checkov("-f", str(ROOT / "Dockerfile"), "--framework", "dockerfile")
    assert result.returncode == 0, result.stdout[-3000:]
    for path in [*TERRAFORM.glob("*.tf"), ROOT / "Dockerfile"]:
        for line in path.read_text().splitlines():
            if "checkov:skip=" in line:
                assert len(line.split(":", 2)[-1].strip()) > 20, f"{path.name}: a skip without its reason: {line}"


def test_checkov_fails_on_redis_without_auth(tmp_path):
    result = checkov("-d", str(mutated(tmp_path, "redis.tf", "auth_enabled            = true",
                                       "auth_enabled            = false")), "--framework", "terraform")
    assert result.returncode != 0 and "CKV_GCP_95" in result.stdout


def test_hadolint_passes():
    result = subprocess.run([tool("hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_cloudbuild_yaml_matches_its_schema():
    result = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.cloudbuild",
                             str(ROOT / "cloudbuild.yaml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def podman_images() -> set[str]:
    """Every image podman holds, layers included; none when podman is missing (the check then skips)."""
    if shutil.which("podman") is None:
        return set()
    listed = subprocess.run(["podman", "images", "--all", "--quiet", "--no-trunc"], capture_output=True, text=True,
                            env={**os.environ, "CONTAINERS_CONF": str(ROOT / "scripts" / "podman-containers.conf")})
    return set(listed.stdout.split())


def test_the_image_builds_runs_as_non_root_serves_healthz_and_takes_a_registration():
    before = podman_images()
    result = subprocess.run(["bash", str(ROOT / "scripts" / "container-check.sh")], capture_output=True, text=True,
                            timeout=1800)
    if result.returncode == 77:
        pytest.skip(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "healthz 200" in result.stdout and "registration 201" in result.stdout and "uid=10001" in result.stdout
    assert "demo page 200 bundle 200" in result.stdout
    base = subprocess.run(["podman", "image", "inspect", "--format", "{{.Id}}", BASE_IMAGE], capture_output=True,
                          text=True).stdout.strip()
    assert podman_images() - before - {f"sha256:{base}"} == set()  # nothing left behind but the base image (a cache)


def test_the_schema_validation_covers_the_cluster_mode(tmp_path):
    """redis_mode cluster's resources are checked against the provider schema like the rest (tests/tf_schema.py),
    though the default mode never creates them."""
    from tests import tf_schema

    schemas = tf_schema.Schemas()
    broken = mutated(tmp_path, "redis_cluster.tf", "authorization_mode      =", "authorisation_mode      =")
    assert any("google_redis_cluster.store: 'authorisation_mode' is not an argument" in p
               for p in tf_schema.validate(broken, schemas))
