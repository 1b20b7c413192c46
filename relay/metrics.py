"""The relay's Prometheus metrics, named relay_<thing>_<unit>."""
from prometheus_client import Counter, Gauge

ACTIVE_RESERVATIONS = Gauge("relay_active_reservations", "Reservations currently held")
RESERVATIONS = Counter("relay_reservations_total", "Reservation requests, by outcome (accepted, refused)",
                       ["outcome", "reason"])
CIRCUITS = Counter("relay_circuits_total", "Relayed connection requests, by outcome", ["outcome"])
CONNECTED_PEERS = Gauge("relay_connected_peers", "Peers holding a connection to the relay")
BYTES_RELAYED = Counter("relay_relayed_bytes_total", "Bytes carried over relayed connections (both directions)")
REGISTRATIONS = Counter("relay_registrations_total",
                        "Registrations of the relay at the rendezvous, by outcome (ok, error, vanished)",
                        ["outcome"])
