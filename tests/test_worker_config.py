"""Worker and relay configuration, identities, and the echo framing: bad input is refused with a clear
message naming what was wrong."""
from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys

import pytest

from relay.settings import RelaySettings
from tests.p2p import BIN
from shared.frames import FrameReader
from worker.echo import MAX_FRAME, FrameError, encode_frame
from shared.identity import IdentityError, load_identity
from shared.settings import ConfigError
from shared.rendezvous_client import _peer_entry
from relay.settings import OPTIONS as RELAY_OPTIONS
from rendezvous.settings import OPTIONS as RENDEZVOUS_OPTIONS
from tests.servers import free_port
from worker.settings import OPTIONS, WorkerSettings


def test_defaults_follow_the_seed_and_go_libp2p():
    worker = WorkerSettings.parse([], {})
    assert worker.rendezvous_url == "http://127.0.0.1:8080" and worker.connect is None
    assert (worker.listen.tcp_port, worker.listen.ws_port, worker.listen.quic_port) == (4001, 4002, None)
    limits = RelaySettings.parse([], {}).limits
    assert (limits.reservation_ttl, limits.max_reservations, limits.max_reservations_per_ip,
            limits.max_circuits_per_peer, limits.circuit_duration, limits.circuit_bytes) == (3600, 128, 8, 16, 120, 131072)


def test_environment_and_flags_both_set_options_and_flags_win():
    settings = WorkerSettings.parse(["--connect", "3"], {"RENDEZVOUS_SERVICE_URL": "https://rv.example/", "CONNECT_POLICY": "all",
                                                         "LIBP2P_RELAY_BOOTSTRAP": "/ip4/1.2.3.4/tcp/4001/p2p/12D3KooWEqp6C1pKL9XBYwnma22zyQteMyzF5TDgjcNzJyA1h78L"})
    assert settings.connect == 3
    assert settings.rendezvous_url == "https://rv.example"
    assert settings.relay == ("/ip4/1.2.3.4/tcp/4001/p2p/12D3KooWEqp6C1pKL9XBYwnma22zyQteMyzF5TDgjcNzJyA1h78L",)


@pytest.mark.parametrize("env, names", [
    ({"TCP_PORT": "70000"}, "TCP_PORT"),
    ({"CONNECT_POLICY": "some"}, "CONNECT_POLICY"),
    ({"RENDEZVOUS_SERVICE_URL": "ftp://x"}, "RENDEZVOUS_SERVICE_URL"),
    ({"LIBP2P_RELAY_BOOTSTRAP": "not-a-multiaddr"}, "LIBP2P_RELAY_BOOTSTRAP"),
    ({"NAMESPACE": "has space"}, "NAMESPACE"),
    ({"DIRECT_DIAL_TIMEOUT": "0"}, "DIRECT_DIAL_TIMEOUT"),
    ({"HOLEPUNCH": "maybe"}, "HOLEPUNCH"),
    ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
])
def test_a_bad_value_names_its_variable(env, names):
    with pytest.raises(ConfigError, match=names):
        WorkerSettings.parse([], env)


def test_a_relay_with_every_port_off_is_refused():
    with pytest.raises(ConfigError, match="unreachable"):
        RelaySettings.parse([], {"TCP_PORT": "off", "WS_PORT": "off", "QUIC_PORT": "off"})


@pytest.mark.parametrize("role, options", [("worker", OPTIONS), ("relay", RELAY_OPTIONS),
                                           ("rendezvous", RENDEZVOUS_OPTIONS)])
def test_help_lists_every_option_with_its_variable_and_default(role, options):
    text = "".join(subprocess.run([str(BIN / role), "--help"], capture_output=True, text=True,
                                  check=True).stdout.split())  # argparse wraps lines anywhere, even at a '-'
    for option in options:
        shown = "unset" if option.default is None else repr(option.default)
        assert option.flag in text and "".join(f"[env {option.env}; default {shown}]".split()) in text


@pytest.mark.parametrize("role", ["worker", "relay", "rendezvous"])
def test_a_configuration_error_stops_the_role_naming_variable_and_flag(role):
    result = subprocess.run([str(BIN / role)], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PORT": "x", "HOME": "/nonexistent"})
    assert result.returncode == 2
    assert "PORT (--port): expected an integer (got 'x')" in result.stderr
    assert "invalid literal" not in result.stderr


def test_a_secret_is_never_echoed_in_a_configuration_error():
    result = subprocess.run([str(BIN / "rendezvous")], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "COOKIE_HMAC_KEY": "hush-" * 3})
    assert result.returncode == 2 and "COOKIE_HMAC_KEY (--cookie-key)" in result.stderr
    assert "hush" not in result.stderr


def test_a_rendezvous_whose_libp2p_port_is_taken_stops_loudly_naming_the_port():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([str(BIN / "rendezvous")], capture_output=True, text=True, timeout=60,
                                env={**os.environ, "HOST": "127.0.0.1", "PORT": str(free_port()),
                                     "LIBP2P_TCP_PORT": str(port), "LIBP2P_HOST": "127.0.0.1"})
    assert result.returncode != 0
    assert "LIBP2P_TCP_PORT" in result.stdout and f"127.0.0.1:{port}" in result.stdout


def test_a_generated_identity_is_persisted_privately_and_reloaded(tmp_path):
    path = tmp_path / "sub" / "worker.key"
    first = load_identity(None, str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_identity(None, str(path)).peer_id == first.peer_id
    assert load_identity(first.encoded(), None).peer_id == first.peer_id  # the same seed as a secret
    assert str(first.peer_id).startswith("12D3KooW")


@pytest.mark.parametrize("secret", ["not base64!", "c2hvcnQ="])
def test_a_bad_identity_secret_is_refused(secret):
    with pytest.raises(IdentityError, match="IDENTITY_KEY"):
        load_identity(secret, None)


class ChunkedStream:
    """Hands over bytes a few at a time, as a network may."""

    def __init__(self, data: bytes, chunk: int):
        self.data, self.chunk = data, chunk

    async def read(self, n: int) -> bytes:
        piece, self.data = self.data[: min(n, self.chunk)], self.data[min(n, self.chunk):]
        return piece


async def test_frames_survive_any_chunking():
    frames = [b"", b"a", os.urandom(300), os.urandom(MAX_FRAME)]
    reader = FrameReader(ChunkedStream(b"".join(encode_frame(f) for f in frames), 3), MAX_FRAME)
    assert [await reader.read_frame() for _ in frames] == frames


async def test_an_oversized_frame_is_refused_before_it_is_read():
    reader = FrameReader(ChunkedStream(b"\x81\x80\x01", 2), MAX_FRAME)  # 16385 bytes announced
    with pytest.raises(FrameError, match="exceeds"):
        await reader.read_frame()
    with pytest.raises(FrameError):
        encode_frame(b"x" * (MAX_FRAME + 1))


@pytest.mark.parametrize("entry", [{"ID": 5, "Addrs": []}, {"Addrs": []}, {"ID": "x", "Addrs": "no"}, "text", None])
def test_a_malformed_discovered_peer_is_skipped(entry):
    assert _peer_entry(entry) is None


def test_variables_are_filled_from_secret_manager_references_and_bad_ones_refused():
    from shared.secrets import SecretError, fill_from_secrets

    env = {"IDENTITY_KEY_SECRET": "projects/p/secrets/relay-identity/versions/latest", "OTHER": "x"}
    assert fill_from_secrets(env, fetch=lambda ref: f"value of {ref}") == ["IDENTITY_KEY"]
    assert env["IDENTITY_KEY"] == "value of projects/p/secrets/relay-identity/versions/latest"
    with pytest.raises(SecretError, match="IDENTITY_KEY_SECRET"):
        fill_from_secrets({"IDENTITY_KEY_SECRET": "relay-identity"}, fetch=lambda ref: "")


def test_python_m_shared_identity_prints_the_peer_id_of_a_seed_for_terraform():
    identity = load_identity(None, None)
    result = subprocess.run([sys.executable, "-m", "shared.identity"], input=identity.encoded() + "\n",
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == str(identity.peer_id)


def test_redis_iam_credentials_fetch_a_token_and_renew_it_a_minute_before_it_expires():
    from shared.secrets import AccessTokenCredentials, SecretError

    now, fetched = [0.0], []

    def fetch():
        fetched.append(now[0])
        return f"token-{len(fetched)}", 3600.0
    credentials = AccessTokenCredentials(fetch, clock=lambda: now[0])
    assert credentials.get_credentials() == ("default", "token-1")
    now[0] = 3539.0
    assert credentials.get_credentials() == ("default", "token-1") and fetched == [0.0]
    now[0] = 3541.0
    assert credentials.get_credentials() == ("default", "token-2")

    def broken():
        raise OSError("metadata server unreachable")
    with pytest.raises(SecretError, match="IAM AUTH: metadata server unreachable"):
        AccessTokenCredentials(broken).get_credentials()
