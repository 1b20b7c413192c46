"""The worker's Prometheus metrics, named worker_<thing>_<unit>."""
from prometheus_client import Counter, Gauge, Histogram

REGISTRATIONS = Counter("worker_registrations_total", "Registration attempts at the rendezvous, by outcome",
                        ["outcome"])
DISCOVERED_PEERS = Gauge("worker_discovered_peers", "Peers in our namespace at the last discovery (not us)")
CONNECTIONS = Counter("worker_connections_total", "Connection attempts to discovered peers, by the path they ended on",
                      ["path"])
CONNECTED_PEERS = Gauge("worker_connected_peers", "Peers we hold a proven connection to, by path", ["path"])
CONNECT_SECONDS = Histogram("worker_connect_seconds", "From the start of a connection attempt to its outcome",
                            ["path"], buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32))
HOLEPUNCH_ATTEMPTS = Counter("worker_holepunch_attempts_total", "DCUtR upgrades attempted over relayed connections")
HOLEPUNCH_SUCCESSES = Counter("worker_holepunch_successes_total", "DCUtR upgrades that ended on a direct connection")
TIME_TO_DIRECT = Histogram("worker_holepunch_time_to_direct_seconds",
                           "From a relayed connection existing to a direct connection existing",
                           buckets=(0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 4, 8, 16))
ECHO_RTT = Histogram("worker_echo_rtt_seconds", "Round-trip time of our echo protocol, by connection kind",
                     ["over"], buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1))
RELAY_RESERVATIONS = Gauge("worker_relay_reservations", "Relays we hold a reservation with")
PORT_MAPPINGS = Gauge("worker_port_mappings", "Ports the gateway forwards to us, by client (natpmp: PCP or "
                      "NAT-PMP; upnp)",
                      ["protocol"])
PORT_MAPPING_ATTEMPTS = Counter("worker_port_mapping_attempts_total",
                                "Requests to map or renew our listen ports at the gateway, by protocol and outcome",
                                ["protocol", "outcome"])
