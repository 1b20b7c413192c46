"""Checks of terraform/ that need no provider and no network: the pieces exist, reference each other,
and are configured securely. Each check returns the problems it found (empty: all well)."""
from __future__ import annotations

import pathlib
import re
from typing import Any

import hcl2

_OPTIONS = hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=False, with_comments=False)
_REFERENCE = re.compile(r"\b((?:google|random)_[a-z0-9_]+)\.([a-z0-9_]+)\b")
# the relay's libp2p ports are the only ones meant to be open to the whole internet
PUBLIC_PORTS = {("tcp", "4001"), ("udp", "4001")}


class Tree:
    def __init__(self, directory: pathlib.Path):
        self.resources: dict[str, dict[str, dict]] = {}
        self.locals: dict[str, Any] = {}
        self.texts: dict[str, str] = {}
        for path in sorted(directory.glob("*.tf")):
            text = path.read_text()
            self.texts[path.name] = text
            parsed = hcl2.loads(text, serialization_options=_OPTIONS)
            for block in parsed.get("resource", []):
                for kind, named in block.items():
                    self.resources.setdefault(kind, {}).update(named)
            for block in parsed.get("locals", []):
                self.locals.update(block)

    def get(self, kind: str, name: str) -> dict:
        return self.resources.get(kind, {}).get(name, {})

    def of_kind(self, kind: str) -> dict[str, dict]:
        return self.resources.get(kind, {})


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else value


def _refers(value: Any, kind: str, name: str) -> bool:
    return f"{kind}.{name}" in str(value)


def broken_references(tree: Tree) -> list[str]:
    problems = []
    for filename, text in tree.texts.items():
        for kind, name in set(_REFERENCE.findall(re.sub(r"#.*", "", text))):
            if name not in tree.of_kind(kind):
                problems.append(f"{filename}: {kind}.{name} is referenced but not defined")
    return problems


def load_balancer_chain(tree: Tree) -> list[str]:
    """Serverless NEG -> backend (with the Cloud Armor policy) -> URL map -> HTTPS proxy -> forwarding rule."""
    problems = []
    backend = tree.get("google_compute_backend_service", "rendezvous")
    if not any(_refers(b.get("group"), "google_compute_region_network_endpoint_group", "rendezvous")
               for b in backend.get("backend", [])):
        problems.append("the rendezvous backend does not use the serverless NEG")
    neg = tree.get("google_compute_region_network_endpoint_group", "rendezvous")
    if neg.get("network_endpoint_type") != "SERVERLESS" or not _refers(_first(neg.get("cloud_run")),
                                                                        "google_cloud_run_v2_service", "rendezvous"):
        problems.append("the NEG is not a serverless NEG of the rendezvous Cloud Run service")
    for name, service in tree.of_kind("google_compute_backend_service").items():
        if not _refers(service.get("security_policy"), "google_compute_security_policy", "edge"):
            problems.append(f"backend {name} has no Cloud Armor policy")
    url_map = tree.get("google_compute_url_map", "lb")
    if not _refers(url_map.get("default_service"), "google_compute_backend_service", "rendezvous"):
        problems.append("the URL map does not send traffic to the rendezvous backend")
    proxy = tree.get("google_compute_target_https_proxy", "lb")
    if not _refers(proxy.get("url_map"), "google_compute_url_map", "lb"):
        problems.append("the HTTPS proxy does not use the URL map")
    if not _refers(proxy.get("ssl_certificates"), "google_compute_managed_ssl_certificate", "lb"):
        problems.append("the HTTPS proxy has no managed certificate")
    rule = tree.get("google_compute_global_forwarding_rule", "https")
    if not _refers(rule.get("target"), "google_compute_target_https_proxy", "lb") or str(rule.get("port_range")) != "443":
        problems.append("no forwarding rule on 443 to the HTTPS proxy")
    return problems


def cloud_armor(tree: Tree) -> list[str]:
    problems = []
    rules = tree.get("google_compute_security_policy", "edge").get("rule", [])
    expressions = " ".join(str(_first(_first(r.get("match", [{}])).get("expr", [{}])).get("expression", ""))
                           for r in rules if isinstance(r, dict))
    for waf in ("sqli", "xss", "lfi", "rce", "cve-canary"):
        if f"evaluatePreconfiguredWaf('{waf}" not in expressions:
            problems.append(f"Cloud Armor lacks the preconfigured {waf} WAF rule")
    if not any(isinstance(r, dict) and r.get("action") == "rate_based_ban" for r in rules):
        problems.append("Cloud Armor has no rate-based ban")
    if not any(isinstance(r, dict) and str(r.get("action", "")).startswith("deny")
               and "request.path.lower().startsWith('/metrics')" in str(r.get("match")) for r in rules):
        problems.append("Cloud Armor lets the internet read /metrics")
    return problems


def redis_is_safe(tree: Tree) -> list[str]:
    problems = []
    redis = tree.get("google_redis_instance", "store")
    if redis.get("auth_enabled") is not True:
        problems.append("Memorystore without AUTH (auth_enabled must be true)")
    if redis.get("transit_encryption_mode") != "SERVER_AUTHENTICATION":
        problems.append("Memorystore without in-transit encryption")
    if _first(redis.get("redis_configs", {})).get("maxmemory-policy") != "noeviction":
        problems.append("Memorystore may evict live registrations (maxmemory-policy must be noeviction)")
    return problems


def cloud_run_reaches_redis(tree: Tree) -> list[str]:
    problems = []
    redis = tree.get("google_redis_instance", "store")
    template = _first(tree.get("google_cloud_run_v2_service", "rendezvous").get("template"))
    interface = _first(_first((template or {}).get("vpc_access", [{}])).get("network_interfaces", [{}]))
    if not _refers(interface.get("network"), "google_compute_network", "vpc") or not _refers(
            redis.get("authorized_network"), "google_compute_network", "vpc"):
        problems.append("the rendezvous and Memorystore are not on the same VPC (Direct VPC egress)")
    env = {_first(e).get("name"): _first(e) for e in _first((template or {}).get("containers", [{}])).get("env", [])}
    if "REDIS_URL" not in env or "secret_key_ref" not in str(env["REDIS_URL"]):
        problems.append("REDIS_URL does not come from Secret Manager")
    version = tree.get("google_secret_manager_secret_version", "redis_url")
    if not _refers(version.get("secret_data"), "google_redis_instance", "store"):
        problems.append("the REDIS_URL secret is not built from the Memorystore instance")
    service = tree.get("google_cloud_run_v2_service", "rendezvous")
    if service.get("ingress") != "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER":
        problems.append("the rendezvous is reachable around the load balancer (and Cloud Armor)")
    return problems


def relays_trusted_by_identity(tree: Tree) -> list[str]:
    """Workers and the demo page take the relay Terraform made, pinned by its peer ID, not any registered."""
    problems = []
    wanted = {"worker": ("RELAY_PEER_IDS", "LIBP2P_RELAY_BOOTSTRAP"), "rendezvous": ("DEMO_RELAY_ADDRS",)}
    for service, names in wanted.items():
        template = _first(tree.get("google_cloud_run_v2_service", service).get("template"))
        env = {_first(e).get("name"): _first(e).get("value")
               for e in _first((template or {}).get("containers", [{}])).get("env", [])}
        for name in names:
            if name not in env or "relay" not in str(env[name]):
                problems.append(f"the {service} does not get {name} from the relay's identity")
    return problems


def firewalls(tree: Tree) -> list[str]:
    problems, open_ports = [], set()
    for name, rule in tree.of_kind("google_compute_firewall").items():
        public = "0.0.0.0/0" in (rule.get("source_ranges") or [])
        for allow in rule.get("allow", []):
            protocol, ports = allow.get("protocol"), allow.get("ports") or []
            if protocol == "all" or not ports:
                problems.append(f"firewall {name} opens every port of {protocol}")
            for port in ports:
                if public:
                    open_ports.add((protocol, str(port)))
                    if (protocol, str(port)) not in PUBLIC_PORTS:
                        problems.append(f"firewall {name} opens {protocol}/{port} to the whole internet")
    for needed in PUBLIC_PORTS:
        if needed not in open_ports:
            problems.append(f"no firewall opens the relay's {needed[0]}/{needed[1]}")
    return problems


def all_problems(directory: pathlib.Path) -> list[str]:
    tree = Tree(directory)
    return (broken_references(tree) + load_balancer_chain(tree) + cloud_armor(tree) + redis_is_safe(tree)
            + cloud_run_reaches_redis(tree) + relays_trusted_by_identity(tree) + firewalls(tree))
