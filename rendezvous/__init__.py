"""holepunch-services rendezvous: a stateless HTTP discovery service on Redis."""
