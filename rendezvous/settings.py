"""Configuration: read from the environment once at start, validated, then passed around as one object.

Nothing else in the package reads `os.environ`. A bad value stops the process with a message that names
the variable (Cloud Run shows it in the revision's logs).
"""
from __future__ import annotations

import dataclasses
import pathlib
import secrets
from typing import Callable, Mapping, TypeVar

from redis.asyncio.connection import parse_url

T = TypeVar("T")

SPEC_MAX_TTL_SECONDS = 72 * 3600  # the libp2p rendezvous spec's maximum registration TTL
MAX_NAMESPACE_BYTES = 255  # the libp2p rendezvous spec's namespace bound


class ConfigError(ValueError):
    """A configuration variable is missing or malformed; the message names it."""


@dataclasses.dataclass(frozen=True)
class Limits:
    ttl_min: int = 10
    ttl_default: int = 2 * 3600
    ttl_max: int = SPEC_MAX_TTL_SECONDS
    timestamp_window: int = 60
    max_body_bytes: int = 8192
    max_addrs: int = 16
    max_addr_length: int = 256
    max_registrations_per_peer: int = 32
    max_peers_per_namespace: int = 200_000
    rate_limit_ip_per_minute: int = 600
    rate_limit_peer_per_minute: int = 60
    discover_limit_default: int = 100
    discover_limit_max: int = 1000


@dataclasses.dataclass(frozen=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 8080
    redis_url: str | None = None  # None: the embedded in-process store
    redis_cluster: bool = False
    cookie_key: bytes = b""
    admin_token: str | None = None
    default_namespace: str = "default"
    key_prefix: str = "hp"
    trusted_proxy_hops: int = 0
    log_level: str = "INFO"
    limits: Limits = dataclasses.field(default_factory=Limits)
    # the libp2p door (/rendezvous/1.0.0 over TCP), off unless LIBP2P_TCP_PORT is set
    libp2p_tcp_port: int | None = None
    libp2p_host: str = "0.0.0.0"
    libp2p_identity_key: str | None = None
    libp2p_identity_file: str | None = None
    # the browser demo (demo.py)
    web_dir: str = str(pathlib.Path(__file__).resolve().parents[1] / "web")
    demo_namespace: str = "browser-demo"
    relay_namespace: str = "relays"
    demo_relay_addrs: tuple[str, ...] = ()
    demo_ice_servers: tuple[str, ...] = ()

    @property
    def embedded(self) -> bool:
        return self.redis_url is None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Settings":
        reader = _EnvReader(env)
        redis_url = reader.text("REDIS_URL", None)
        if redis_url is not None:
            _check_redis_url(redis_url)
        cookie_key = reader.text("COOKIE_HMAC_KEY", None)
        if cookie_key is None:
            if redis_url is not None:
                # Replicas sharing a Redis must share the key, or one replica's cookies fail on another.
                raise ConfigError("COOKIE_HMAC_KEY: required when REDIS_URL is set (all replicas must share it)")
            cookie_key = secrets.token_hex(32)
        if len(cookie_key) < 32:
            raise ConfigError("COOKIE_HMAC_KEY: must be at least 32 characters")
        admin_token = reader.text("ADMIN_TOKEN", None)
        if admin_token is not None and len(admin_token) < 16:
            raise ConfigError("ADMIN_TOKEN: must be at least 16 characters")
        defaults = Limits()
        limits = Limits(
            ttl_min=reader.integer("TTL_MIN_SECONDS", defaults.ttl_min, 1, SPEC_MAX_TTL_SECONDS),
            ttl_default=reader.integer("TTL_DEFAULT_SECONDS", defaults.ttl_default, 1, SPEC_MAX_TTL_SECONDS),
            ttl_max=reader.integer("TTL_MAX_SECONDS", defaults.ttl_max, 1, SPEC_MAX_TTL_SECONDS),
            timestamp_window=reader.integer("TIMESTAMP_WINDOW_SECONDS", defaults.timestamp_window, 1, 3600),
            max_body_bytes=reader.integer("MAX_BODY_BYTES", defaults.max_body_bytes, 512, 1 << 20),
            max_addrs=reader.integer("MAX_ADDRS", defaults.max_addrs, 1, 256),
            max_addr_length=reader.integer("MAX_ADDR_LENGTH", defaults.max_addr_length, 16, 1024),
            max_registrations_per_peer=reader.integer(
                "MAX_REGISTRATIONS_PER_PEER", defaults.max_registrations_per_peer, 1, 10_000),
            max_peers_per_namespace=reader.integer(
                "MAX_PEERS_PER_NAMESPACE", defaults.max_peers_per_namespace, 1, 100_000_000),
            rate_limit_ip_per_minute=reader.integer(
                "RATE_LIMIT_IP_PER_MINUTE", defaults.rate_limit_ip_per_minute, 1, 100_000_000),
            rate_limit_peer_per_minute=reader.integer(
                "RATE_LIMIT_PEER_PER_MINUTE", defaults.rate_limit_peer_per_minute, 1, 100_000_000),
            discover_limit_default=reader.integer(
                "DISCOVER_LIMIT_DEFAULT", defaults.discover_limit_default, 1, 10_000),
            discover_limit_max=reader.integer("DISCOVER_LIMIT_MAX", defaults.discover_limit_max, 1, 10_000),
        )
        if not limits.ttl_min <= limits.ttl_default <= limits.ttl_max:
            raise ConfigError("TTL_DEFAULT_SECONDS: must lie between TTL_MIN_SECONDS and TTL_MAX_SECONDS")
        if limits.discover_limit_default > limits.discover_limit_max:
            raise ConfigError("DISCOVER_LIMIT_DEFAULT: must not exceed DISCOVER_LIMIT_MAX")
        default_namespace = reader.text("DEFAULT_NAMESPACE", "default")
        from rendezvous.registration import namespace_problem  # the one namespace rule

        problem = namespace_problem(default_namespace)
        if problem:
            raise ConfigError(f"DEFAULT_NAMESPACE: {problem}")
        demo_namespace = reader.text("DEMO_NAMESPACE", "browser-demo")
        relay_namespace = reader.text("RELAY_NAMESPACE", "relays")
        for name, value in (("DEMO_NAMESPACE", demo_namespace), ("RELAY_NAMESPACE", relay_namespace)):
            if problem := namespace_problem(value):
                raise ConfigError(f"{name}: {problem}")
        log_level = reader.text("LOG_LEVEL", "INFO").upper()
        if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError("LOG_LEVEL: must be one of DEBUG, INFO, WARNING, ERROR")
        return cls(
            host=reader.text("HOST", "0.0.0.0"),
            port=reader.integer("PORT", 8080, 0, 65535),
            redis_url=redis_url,
            redis_cluster=reader.boolean("REDIS_CLUSTER", False),
            cookie_key=cookie_key.encode(),
            admin_token=admin_token,
            default_namespace=default_namespace,
            key_prefix=reader.text("KEY_PREFIX", "hp"),
            trusted_proxy_hops=reader.integer("TRUSTED_PROXY_HOPS", 0, 0, 10),
            log_level=log_level,
            limits=limits,
            libp2p_tcp_port=reader.integer("LIBP2P_TCP_PORT", None, 0, 65535),
            libp2p_host=reader.text("LIBP2P_HOST", "0.0.0.0"),
            libp2p_identity_key=reader.text("LIBP2P_IDENTITY_KEY", None),
            libp2p_identity_file=reader.text("LIBP2P_IDENTITY_FILE", None),
            web_dir=reader.text("WEB_DIR", cls.web_dir),
            demo_namespace=demo_namespace,
            relay_namespace=relay_namespace,
            demo_relay_addrs=reader.csv("DEMO_RELAY_ADDRS"),
            demo_ice_servers=reader.csv("DEMO_ICE_SERVERS"),
        )


def _check_redis_url(url: str) -> None:
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("REDIS_URL: must start with redis://, rediss:// or unix://")
    try:
        parse_url(url)
    except ValueError as exc:
        raise ConfigError(f"REDIS_URL: {exc}") from None


class _EnvReader:
    def __init__(self, env: Mapping[str, str]):
        self.env = env

    def _get(self, name: str, default: T, convert: Callable[[str], T]) -> T:
        raw = self.env.get(name)
        if raw is None or raw.strip() == "":
            return default
        return convert(raw.strip())

    def text(self, name: str, default):
        return self._get(name, default, str)

    def csv(self, name: str) -> tuple[str, ...]:
        return self._get(name, (), lambda raw: tuple(part.strip() for part in raw.split(",") if part.strip()))

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        def convert(raw: str) -> int:
            try:
                value = int(raw)
            except ValueError:
                raise ConfigError(f"{name}: expected an integer, got {raw!r}") from None
            if not low <= value <= high:
                raise ConfigError(f"{name}: {value} is outside {low}..{high}")
            return value

        return self._get(name, default, convert)

    def boolean(self, name: str, default: bool) -> bool:
        def convert(raw: str) -> bool:
            lowered = raw.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{name}: expected true or false, got {raw!r}")

        return self._get(name, default, convert)
