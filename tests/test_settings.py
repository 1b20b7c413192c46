"""Configuration is validated at start, with a message that names the bad variable."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from relay.settings import RelaySettings
from rendezvous.settings import ConfigError, Settings
from worker.settings import WorkerSettings

GOOD = {"REDIS_URL": "rediss://:secret@10.0.0.3:6378/0", "COOKIE_HMAC_KEY": "c" * 40}


@pytest.mark.parametrize("env, variable", [
    ({"PORT": "eighty"}, "PORT"),
    ({"PORT": "70000"}, "PORT"),
    ({"REDIS_URL": "http://redis:6379"}, "REDIS_URL"),
    ({"REDIS_URL": "redis://localhost:6379"}, "COOKIE_HMAC_KEY"),
    ({"COOKIE_HMAC_KEY": "short"}, "COOKIE_HMAC_KEY"),
    ({"ADMIN_TOKEN": "tiny"}, "ADMIN_TOKEN"),
    ({"TTL_MAX_SECONDS": str(72 * 3600 + 1)}, "TTL_MAX_SECONDS"),
    ({"TTL_MIN_SECONDS": "100", "TTL_DEFAULT_SECONDS": "50"}, "TTL_DEFAULT_SECONDS"),
    ({"REDIS_CLUSTER": "maybe"}, "REDIS_CLUSTER"),
    ({"DEFAULT_NAMESPACE": "has space"}, "DEFAULT_NAMESPACE"),
    ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
    ({"DEMO_NAMESPACE": "a{b}"}, "DEMO_NAMESPACE"),
    ({"RELAY_NAMESPACE": "two words"}, "RELAY_NAMESPACE"),
])
def test_bad_variable_is_named(env, variable):
    with pytest.raises(ConfigError) as err:
        Settings.parse([], env)
    assert str(err.value).startswith(f"{variable} (--")


def test_demo_settings_are_parsed_once_at_start():
    settings = Settings.parse([], {"DEMO_RELAY_ADDRS": " /dns4/relay.example.com/tcp/443/wss/p2p/x , ",
                                  "DEMO_ICE_SERVERS": "stun:stun.example.com:3478", "DEMO_NAMESPACE": "chat"})
    assert settings.demo_relay_addrs == ("/dns4/relay.example.com/tcp/443/wss/p2p/x",)
    assert settings.demo_ice_servers == ("stun:stun.example.com:3478",)
    assert settings.demo_namespace == "chat" and settings.relay_namespace == "relays"


def test_memorystore_style_url_and_defaults():
    settings = Settings.parse([], {**GOOD, "PORT": "9000", "MAX_ADDRS": "4"})
    assert settings.redis_url == GOOD["REDIS_URL"] and settings.port == 9000 and settings.limits.max_addrs == 4
    assert settings.limits.ttl_min == 10 and settings.limits.ttl_default == 7200 and settings.limits.ttl_max == 259200
    assert Settings.parse([], {}).embedded


def test_cli_exits_with_the_variable_named():
    env = {**os.environ, "PORT": "not-a-port"}
    result = subprocess.run([sys.executable, "-m", "rendezvous.cli"], env=env, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2 and "PORT" in result.stderr


@pytest.mark.parametrize("variable, field, shortest, kept", [("COOKIE_HMAC_KEY", "cookie_key", 32, str.encode),
                                                             ("ADMIN_TOKEN", "admin_token", 16, str)])
def test_a_secret_one_character_short_of_its_minimum_is_refused_and_the_minimum_accepted(variable, field, shortest,
                                                                                         kept):
    with pytest.raises(ConfigError) as err:
        Settings.parse([], {**GOOD, variable: "s" * (shortest - 1)})
    assert str(err.value).startswith(f"{variable} (--")
    settings = Settings.parse([], {**GOOD, variable: "s" * shortest})
    assert getattr(settings, field) == kept("s" * shortest)


@pytest.mark.parametrize("parse", [Settings.parse, WorkerSettings.parse, RelaySettings.parse])
def test_the_observability_options_are_read_once_by_every_role(parse):
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces",
           "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "TRACE_FILE": "/tmp/spans.jsonl",
           "GOOGLE_CLOUD_PROJECT": "p", "LOG_LEVEL": "debug", "LIBP2P_LOG_LEVEL": "error"}
    seen = parse([], env).observability
    assert seen.otlp_endpoint == "http://collector:4318/v1/traces"  # the traces-only variable wins
    assert (seen.trace_file, seen.google_cloud_project, seen.log_level, seen.libp2p_log_level) == (
        "/tmp/spans.jsonl", "p", "DEBUG", "ERROR")
    assert parse([], {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}).observability.otlp_endpoint \
        == "http://collector:4318"


def test_memorystore_cluster_iam_auth_gives_the_cluster_a_token_provider():
    from rendezvous.store import _cluster_auth
    from shared.secrets import AccessTokenCredentials

    settings = Settings.parse([], {**GOOD, "REDIS_CLUSTER": "true", "REDIS_IAM_AUTH": "true"})
    assert settings.redis_iam_auth and isinstance(_cluster_auth(settings)["credential_provider"],
                                                  AccessTokenCredentials)
    assert _cluster_auth(Settings.parse([], {**GOOD, "REDIS_CLUSTER": "true"})) == {}
