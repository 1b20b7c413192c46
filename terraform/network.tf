resource "google_compute_network" "vpc" {
  name                    = "holepunch"
  auto_create_subnetworks = false
  depends_on              = [google_project_service.apis]
}

# Cloud Run's Direct VPC egress takes addresses from here to reach Memorystore.
resource "google_compute_subnetwork" "run" {
  name                     = "holepunch-run"
  region                   = var.region
  network                  = google_compute_network.vpc.id
  ip_cidr_range            = "10.10.0.0/24"
  private_ip_google_access = true
  log_config {
    aggregation_interval = "INTERVAL_5_MIN"
    flow_sampling        = 0.5
  }
}

resource "google_compute_subnetwork" "relay" {
  name                     = "holepunch-relay"
  region                   = var.region
  network                  = google_compute_network.vpc.id
  ip_cidr_range            = "10.10.1.0/24"
  private_ip_google_access = true
  log_config {
    aggregation_interval = "INTERVAL_5_MIN"
    flow_sampling        = 0.5
  }
}

# The relay's libp2p ports are public by design: TCP and QUIC for peers, nothing else.
resource "google_compute_firewall" "relay_libp2p" {
  name          = "holepunch-relay-libp2p"
  network       = google_compute_network.vpc.id
  direction     = "INGRESS"
  source_ranges = ["0.0.0.0/0"]
  target_tags   = ["holepunch-relay"]
  allow {
    protocol = "tcp"
    ports    = ["4001"]
  }
  allow {
    protocol = "udp"
    ports    = ["4001"]
  }
}

# The WebSocket port and the health endpoint only from Google's load balancer, which terminates wss://.
resource "google_compute_firewall" "relay_from_lb" {
  name          = "holepunch-relay-from-lb"
  network       = google_compute_network.vpc.id
  direction     = "INGRESS"
  source_ranges = local.google_lb_ranges
  target_tags   = ["holepunch-relay"]
  allow {
    protocol = "tcp"
    ports    = ["4002", "8082"]
  }
}

# redis_mode cluster: Memorystore for Redis Cluster's Private Service Connect endpoints (the discovery
# endpoint and one per node) take their addresses from here; Cloud Run reaches them over Direct VPC egress.
resource "google_compute_subnetwork" "redis" {
  count                    = local.redis_cluster ? 1 : 0
  name                     = "holepunch-redis"
  region                   = var.region
  network                  = google_compute_network.vpc.id
  ip_cidr_range            = "10.10.2.0/24"
  private_ip_google_access = true
  log_config {
    aggregation_interval = "INTERVAL_5_MIN"
    flow_sampling        = 0.5
  }
}
