"""terraform/ against the google provider's schema (tests/tf_schema.py): the real configuration passes, and a
copy with one mistake is caught with the message terraform validate would give it."""
from __future__ import annotations

import pathlib
import shutil

import pytest

from tests import tf_schema

TERRAFORM = pathlib.Path(__file__).resolve().parent.parent / "terraform"


@pytest.fixture(scope="session")
def schemas() -> tf_schema.Schemas:
    loaded = tf_schema.Schemas()
    try:
        loaded.get("google")
    except tf_schema.SchemaUnavailable as error:
        # CI reaches PyPI; a run that cannot is not a pass, whatever else it proves
        pytest.fail(f"the google provider schema is unavailable, so terraform/ was not validated: {error}")
    return loaded


def mutated(tmp_path: pathlib.Path, filename: str, old: str, new: str) -> pathlib.Path:
    copy = tmp_path / "terraform"
    shutil.copytree(TERRAFORM, copy)
    text = (copy / filename).read_text()
    assert text.count(old) == 1, f"{old!r} is not in {filename} exactly once: update the mutation"
    (copy / filename).write_text(text.replace(old, new))
    return copy


def test_the_configuration_matches_the_pinned_provider_schema(schemas):
    assert tf_schema.validate(TERRAFORM, schemas) == []
    assert tf_schema.admits(tf_schema.pins(TERRAFORM)["google"], schemas.get("google").version)


def test_the_schema_knows_the_blocks_this_configuration_uses(schemas):
    """The reduction keeps what validation leans on: max-items-1 blocks, list blocks, required arguments,
    and the snake_case names taken from the docs links rather than guessed."""
    google = schemas.get("google")
    redis = google.structs[google.resources["google_redis_instance"]]
    assert redis["attrs"]["memory_size_gb"] == ["number", True]
    assert redis["attrs"]["redis_configs"] == ["map(string)", False]
    backend = google.structs[google.resources["google_compute_backend_service"]]
    assert backend["blocks"]["log_config"][1:] == [True, False]  # single, optional
    assert backend["blocks"]["backend"][1:] == [False, False]  # a list
    machine = google.structs[google.resources["google_compute_instance"]]
    assert machine["blocks"]["boot_disk"][1:] == [True, True]  # single and required
    assert google.version == "8.7.0"


MISTAKES = [
    pytest.param("redis.tf", "transit_encryption_mode", "transit_encription_mode",
                 "redis.tf: resource google_redis_instance.store: 'transit_encription_mode' is not an argument "
                 "or block of this type (did you mean 'transit_encryption_mode'?)", id="misspelled-argument"),
    pytest.param("run.tf", "      min_instance_count = var.rendezvous_min_instances",
                 "      min_instances_count = var.rendezvous_min_instances",
                 "run.tf: resource google_cloud_run_v2_service.rendezvous: template: scaling: "
                 "'min_instances_count' is not an argument or block of this type (did you mean "
                 "'min_instance_count'?)", id="misspelled-nested-argument"),
    pytest.param("redis.tf", "  memory_size_gb          = var.redis_memory_gb\n", "",
                 "redis.tf: resource google_redis_instance.store: the required argument 'memory_size_gb' is "
                 "missing", id="missing-required-argument"),
    pytest.param("lb.tf", "    port = 4002\n", "",
                 "lb.tf: resource google_compute_instance_group.relay: named_port: the required argument "
                 "'port' is missing", id="missing-required-nested-argument"),
    pytest.param("redis.tf", '"google_redis_instance"', '"google_redis_instanse"',
                 "redis.tf: resource google_redis_instanse.store: the google provider 8.7.0 has no resource "
                 "google_redis_instanse", id="unknown-resource-type"),
    pytest.param("lb.tf", "    sample_rate = 1.0\n  }\n",
                 "    sample_rate = 1.0\n  }\n  log_config {\n    enable = false\n  }\n",
                 "lb.tf: resource google_compute_backend_service.rendezvous: block 'log_config' may appear "
                 "once (max items 1), it appears 2 times", id="single-block-twice"),
    pytest.param("redis.tf", "auth_enabled            = true", 'auth_enabled            = "yes"',
                 'redis.tf: resource google_redis_instance.store: auth_enabled = "yes": a string where a bool '
                 'is expected (only "true" and "false" convert)', id="string-for-bool"),
    pytest.param("lb.tf", "timeout_sec           = 3600", 'timeout_sec           = "an hour"',
                 'lb.tf: resource google_compute_backend_service.relay_ws: timeout_sec = "an hour": a string '
                 "that is not a number, where a number is expected", id="string-for-number"),
    pytest.param("lb.tf", "instances = [google_compute_instance.relay.id]",
                 'instances = "holepunch-relay"',
                 'lb.tf: resource google_compute_instance_group.relay: instances = "holepunch-relay": a string '
                 "where a list(string) is expected", id="string-for-list"),
    pytest.param("redis.tf", 'redis_configs = {\n    "maxmemory-policy" = "noeviction"',
                 'redis_configs {\n    maxmemory_policy = "noeviction"',
                 "redis.tf: resource google_redis_instance.store: 'redis_configs' is an argument, not a block: "
                 "write `redis_configs = ...`", id="block-for-an-argument"),
    pytest.param("armor.tf", 'dynamic "rule" {', 'dynamic "rules" {',
                 "armor.tf: resource google_compute_security_policy.edge: dynamic 'rules' is not a nested "
                 "block of this type (did you mean 'rule'?)", id="dynamic-block-misnamed"),
    pytest.param("versions.tf", 'version = "~> 8.7"', 'version = "~> 6.0"',
                 "versions.tf pins google '~> 6.0', but the schema checked here is 8.7.0: move the pin or the "
                 "schema package in tests/tf_schema.py", id="pin-names-another-major"),
]


@pytest.mark.parametrize("filename, old, new, expected", MISTAKES)
def test_one_mistake_is_caught(schemas, tmp_path, filename, old, new, expected):
    assert tf_schema.validate(mutated(tmp_path, filename, old, new), schemas) == [expected]


def test_values_terraform_converts_are_not_mistakes(schemas, tmp_path):
    """"443" is a number and 1 a string to terraform; expressions and templates are left to terraform."""
    copy = mutated(tmp_path, "lb.tf", "timeout_sec           = 3600", 'timeout_sec           = "3600"')
    text = (copy / "redis.tf").read_text().replace('redis_version           = "REDIS_7_0"',
                                                   'redis_version           = "REDIS_${7}_0"')
    (copy / "redis.tf").write_text(text.replace("auth_enabled            = true", 'auth_enabled            = "true"'))
    assert tf_schema.validate(copy, schemas) == []


def test_other_providers_are_skipped(schemas, tmp_path):
    copy = mutated(tmp_path, "secrets.tf", 'resource "random_id" "relay_seed" {',
                   'resource "random_id" "relay_seed" {\n  not_an_argument = 1')
    assert tf_schema.validate(copy, schemas) == []


@pytest.mark.parametrize("constraint, version, admitted", [
    ("~> 8.7", "8.7.0", True), ("~> 8.7", "8.9.1", True), ("~> 8.7", "9.0.0", False), ("~> 6.0", "8.7.0", False),
    ("~> 8.7.0", "8.7.4", True), ("~> 8.7.0", "8.8.0", False), (">= 6, < 9", "8.7.0", True), ("= 8.6.0", "8.7.0", False),
])
def test_version_constraints(constraint, version, admitted):
    assert tf_schema.admits(constraint, version) is admitted


def test_a_schema_that_cannot_be_downloaded_is_an_error_with_pip_s_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(tf_schema, "CACHE", tmp_path)
    monkeypatch.setitem(tf_schema.PACKAGES, "google", ("cdktn-provider-google", "0.0.0"))
    with pytest.raises(tf_schema.SchemaUnavailable, match=r"cannot download cdktn-provider-google==0\.0\.0"):
        tf_schema.fetch("google")


def test_a_resource_on_google_beta_is_checked_against_the_beta_schema(schemas, tmp_path):
    class Recording(tf_schema.Schemas):
        """Hands out the google schema for both, to spare the download, and notes what was asked for."""

        def __init__(self):
            super().__init__()
            self.asked: list[str] = []

        def get(self, provider):
            self.asked.append(provider)
            return schemas.get("google")

    copy = mutated(tmp_path, "redis.tf", 'resource "google_redis_instance" "store" {',
                   'resource "google_redis_instance" "store" {\n  provider = google-beta.eu')
    recording = Recording()
    assert tf_schema.validate(copy, recording) == []
    assert recording.asked.count("google-beta") == 1


@pytest.mark.parametrize("mode, made, not_made", [("instance", "google_redis_instance.store", "google_redis_cluster"),
                                                  ("cluster", "google_redis_cluster.store", "google_redis_instance")])
def test_the_offline_plan_follows_the_variables(mode, made, not_made):
    import subprocess
    import sys

    plan = subprocess.run([sys.executable, "scripts/tf-plan.py", "--brief", "-var", f"redis_mode={mode}"],
                          cwd=pathlib.Path(__file__).resolve().parents[1], capture_output=True, text=True,
                          timeout=120, check=True).stdout
    assert f"+ {made}" in plan and f"+ {not_made}" not in plan
    assert "google_cloud_run_v2_service.rendezvous" in plan and "Plan: " in plan and "Outputs:" in plan
