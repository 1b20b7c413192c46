resource "google_compute_address" "relay" {
  name   = "holepunch-relay"
  region = var.region
}

locals {
  # what workers and the demo page dial, pinned to the relay's identity (empty until var.relay_peer_id is set)
  relay_bootstrap = var.relay_peer_id == "" ? "" : "/ip4/${google_compute_address.relay.address}/tcp/4001/p2p/${var.relay_peer_id}"
  relay_wss       = var.relay_peer_id == "" ? "" : "/dns4/${var.relay_domain}/tcp/443/wss/p2p/${var.relay_peer_id}"
  relay_env = {
    IDENTITY_KEY_SECRET = "${google_secret_manager_secret.secret["relay_identity"].id}/versions/latest"
    # the wss:// address is the load balancer's (lb.tf); browsers learn it from the relay's registration
    ANNOUNCE_ADDRS         = "/ip4/${google_compute_address.relay.address}/tcp/4001,/ip4/${google_compute_address.relay.address}/udp/4001/quic-v1,/dns4/${var.relay_domain}/tcp/443/wss"
    RENDEZVOUS_SERVICE_URL = "https://${var.domain}"
    PORT                   = "8082"
  }
}

# Container-Optimized OS runs the image in the relay role, with host networking so the libp2p ports and
# the observed addresses are the VM's own. Cloud Build rolls it by setting `relay-image` and resetting.
resource "google_compute_instance" "relay" {
  # checkov:skip=CKV_GCP_40: a public relay is the point of this VM; only its libp2p ports are open (network.tf)
  # checkov:skip=CKV_GCP_38: the disk holds no data (the identity key comes from Secret Manager at start); Google-managed encryption at rest
  name                      = "holepunch-relay"
  zone                      = var.relay_zone
  machine_type              = var.relay_machine_type
  tags                      = ["holepunch-relay"]
  allow_stopping_for_update = true

  boot_disk {
    initialize_params {
      image = "cos-cloud/cos-stable"
    }
  }

  network_interface {
    subnetwork = google_compute_subnetwork.relay.id
    access_config {
      nat_ip = google_compute_address.relay.address
    }
  }

  service_account {
    email  = google_service_account.relay.email
    scopes = ["cloud-platform"] # what it may do is limited by the account's roles above
  }

  shielded_instance_config {
    enable_secure_boot          = true
    enable_vtpm                 = true
    enable_integrity_monitoring = true
  }

  metadata = {
    block-project-ssh-keys = "true"
    enable-oslogin         = "TRUE"
    google-logging-enabled = "true"
    relay-image            = local.image
    user-data = templatefile("${path.module}/relay-cloud-init.yaml", {
      registry = "${var.region}-docker.pkg.dev"
      env      = join(" ", [for name, value in local.relay_env : "-e ${name}=${value}"])
    })
  }
}
