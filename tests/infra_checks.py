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
    """Both stores var.redis_mode can pick: AUTH, TLS in transit, and a full Redis that refuses writes."""
    problems = []
    redis = tree.get("google_redis_instance", "store")
    if redis.get("auth_enabled") is not True:
        problems.append("Memorystore without AUTH (auth_enabled must be true)")
    if redis.get("transit_encryption_mode") != "SERVER_AUTHENTICATION":
        problems.append("Memorystore without in-transit encryption")
    if _first(redis.get("redis_configs", {})).get("maxmemory-policy") != "noeviction":
        problems.append("Memorystore may evict live registrations (maxmemory-policy must be noeviction)")
    cluster = tree.get("google_redis_cluster", "store")
    # Memorystore for Redis Cluster's only AUTH is IAM (no password exists to leak or to forget)
    if cluster.get("authorization_mode") != "AUTH_MODE_IAM_AUTH":
        problems.append("Memorystore Cluster without AUTH (authorization_mode must be AUTH_MODE_IAM_AUTH)")
    if cluster.get("transit_encryption_mode") != "TRANSIT_ENCRYPTION_MODE_SERVER_AUTHENTICATION":
        problems.append("Memorystore Cluster without in-transit encryption")
    if _first(cluster.get("redis_configs", {})).get("maxmemory-policy") != "noeviction":
        problems.append("Memorystore Cluster may evict live registrations (maxmemory-policy must be noeviction)")
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


# what `count` each store's resources carry: one mode's resources exist, the other's not
_IN_CLUSTER_MODE, _IN_INSTANCE_MODE = "${local.redis_cluster ? 1 : 0}", "${local.redis_cluster ? 0 : 1}"
CLUSTER_PIECES = [("google_redis_cluster", "store"), ("google_network_connectivity_service_connection_policy", "redis"),
                  ("google_compute_subnetwork", "redis"), ("google_project_iam_member", "rendezvous_redis_cluster")]


def redis_mode_picks_one_store(tree: Tree) -> list[str]:
    """var.redis_mode = instance makes the instance and nothing of the cluster; cluster the reverse, and the
    rendezvous is told which (REDIS_CLUSTER) and given the matching REDIS_URL and CA."""
    problems = []
    if tree.locals.get("redis_cluster") != '${var.redis_mode == "cluster"}':
        problems.append('local.redis_cluster is not var.redis_mode == "cluster"')
    if tree.get("google_redis_instance", "store").get("count") != _IN_INSTANCE_MODE:
        problems.append("the Memorystore instance is not made exactly when redis_mode is instance")
    for kind, name in CLUSTER_PIECES:
        if tree.get(kind, name).get("count") != _IN_CLUSTER_MODE:
            problems.append(f"{kind}.{name} is not made exactly when redis_mode is cluster")
    template = _first(tree.get("google_cloud_run_v2_service", "rendezvous").get("template"))
    env = {_first(e).get("name"): _first(e).get("value")
           for e in _first((template or {}).get("containers", [{}])).get("env", [])}
    for name in ("REDIS_CLUSTER", "REDIS_IAM_AUTH"):  # the cluster is routed by slot, and its AUTH is IAM
        if env.get(name) != '${local.redis_cluster ? "true" : "false"}':
            problems.append(f"the rendezvous's {name} does not follow redis_mode")
    # the conditional's first branch is cluster mode's
    endpoint = "google_redis_cluster.store[0].discovery_endpoints[0]"
    for secret, cluster_parts, instance_part in [
            ("redis_url", (f"{endpoint}.address", f"{endpoint}.port"), "google_redis_instance.store[0].host"),
            ("redis_ca", ("google_redis_cluster.store[0].managed_server_ca",), "google_redis_instance.store[0].server_ca_certs")]:
        data = str(tree.get("google_secret_manager_secret_version", secret).get("secret_data"))
        if not (data.startswith("${(local.redis_cluster ?") and instance_part in data
                and all(part in data and data.index(part) < data.index(instance_part) for part in cluster_parts)):
            problems.append(f"the {secret} secret is not the cluster's in cluster mode and the instance's otherwise")
    return problems


def redis_cluster_reaches_the_vpc(tree: Tree) -> list[str]:
    """The cluster's Private Service Connect endpoints land in a subnet of the rendezvous's VPC, through a
    service connection policy for Memorystore on that VPC; only the rendezvous may connect, to this cluster."""
    problems = []
    cluster = tree.get("google_redis_cluster", "store")
    if not _refers(_first(cluster.get("psc_configs")).get("network") if cluster.get("psc_configs") else None,
                   "google_compute_network", "vpc"):
        problems.append("the Memorystore Cluster is not on the rendezvous's VPC (psc_configs network)")
    policy = tree.get("google_network_connectivity_service_connection_policy", "redis")
    if policy.get("service_class") != "gcp-memorystore-redis" or not _refers(policy.get("network"),
                                                                            "google_compute_network", "vpc"):
        problems.append("no service connection policy for Memorystore (gcp-memorystore-redis) on the VPC")
    subnets = re.findall(r"google_compute_subnetwork\.([a-z0-9_]+)", str(_first(policy.get("psc_config", [{}]))))
    if not subnets or not all(_refers(tree.get("google_compute_subnetwork", s).get("network"), "google_compute_network",
                                      "vpc") for s in subnets):
        problems.append("the service connection policy's subnet is not in the VPC")
    if not _refers(cluster.get("depends_on"), "google_network_connectivity_service_connection_policy", "redis"):
        problems.append("the Memorystore Cluster may be created before its service connection policy")
    grants = [(name, g) for name, g in tree.of_kind("google_project_iam_member").items()
              if g.get("role") == "roles/redis.dbConnectionUser"]
    if not any(_refers(g.get("member"), "google_service_account", "rendezvous") for _, g in grants):
        problems.append("the rendezvous may not connect to the Memorystore Cluster (roles/redis.dbConnectionUser)")
    for name, grant in grants:
        if not _refers(grant.get("member"), "google_service_account", "rendezvous"):
            problems.append(f"{name} lets someone other than the rendezvous connect to the Memorystore Cluster")
        if not _refers(_first(grant.get("condition", [{}])).get("expression"), "google_redis_cluster", "store"):
            problems.append(f"{name} grants roles/redis.dbConnectionUser on every cluster of the project")
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
            + cloud_run_reaches_redis(tree) + redis_mode_picks_one_store(tree) + redis_cluster_reaches_the_vpc(tree)
            + relays_trusted_by_identity(tree) + firewalls(tree))
