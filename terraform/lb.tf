resource "google_compute_global_address" "lb" {
  name = "holepunch-lb"
}

resource "google_compute_region_network_endpoint_group" "rendezvous" {
  name                  = "holepunch-rendezvous"
  region                = var.region
  network_endpoint_type = "SERVERLESS"
  cloud_run {
    service = google_cloud_run_v2_service.rendezvous.name
  }
}

resource "google_compute_backend_service" "rendezvous" {
  name                  = "holepunch-rendezvous"
  load_balancing_scheme = "EXTERNAL_MANAGED"
  protocol              = "HTTPS"
  security_policy       = google_compute_security_policy.edge.id
  backend {
    group = google_compute_region_network_endpoint_group.rendezvous.id
  }
  log_config {
    enable      = true
    sample_rate = 1.0
  }
}

# wss:// for browsers: the load balancer terminates TLS with the managed certificate and forwards the
# WebSocket to the relay's WS port; plain TCP and QUIC go to the VM's address directly.
resource "google_compute_instance_group" "relay" {
  name      = "holepunch-relay"
  zone      = var.relay_zone
  instances = [google_compute_instance.relay.id]
  named_port {
    name = "ws"
    port = 4002
  }
}

resource "google_compute_health_check" "relay" {
  name = "holepunch-relay"
  http_health_check {
    port         = 8082
    request_path = "/healthz"
  }
}

resource "google_compute_backend_service" "relay_ws" {
  name                  = "holepunch-relay-ws"
  load_balancing_scheme = "EXTERNAL_MANAGED"
  protocol              = "HTTP"
  port_name             = "ws"
  timeout_sec           = 3600 # how long one WebSocket may stay open
  health_checks         = [google_compute_health_check.relay.id]
  security_policy       = google_compute_security_policy.edge.id
  backend {
    group           = google_compute_instance_group.relay.id
    balancing_mode  = "UTILIZATION"
    capacity_scaler = 1.0
  }
  log_config {
    enable = true
  }
}

resource "google_compute_url_map" "lb" {
  name            = "holepunch"
  default_service = google_compute_backend_service.rendezvous.id
  host_rule {
    hosts        = [var.relay_domain]
    path_matcher = "relay"
  }
  path_matcher {
    name            = "relay"
    default_service = google_compute_backend_service.relay_ws.id
  }
}

resource "google_compute_managed_ssl_certificate" "lb" {
  name = "holepunch"
  managed {
    domains = [var.domain, var.relay_domain]
  }
}

resource "google_compute_ssl_policy" "modern" {
  name            = "holepunch-modern"
  profile         = "MODERN"
  min_tls_version = "TLS_1_2"
}

resource "google_compute_target_https_proxy" "lb" {
  name             = "holepunch"
  url_map          = google_compute_url_map.lb.id
  ssl_certificates = [google_compute_managed_ssl_certificate.lb.id]
  ssl_policy       = google_compute_ssl_policy.modern.id
}

resource "google_compute_global_forwarding_rule" "https" {
  name                  = "holepunch-https"
  load_balancing_scheme = "EXTERNAL_MANAGED"
  ip_address            = google_compute_global_address.lb.id
  port_range            = "443"
  target                = google_compute_target_https_proxy.lb.id
}
