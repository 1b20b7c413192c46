locals {
  # var.redis_mode picks one of the two stores below; the other has count 0. The rendezvous reads either
  # through REDIS_URL (secrets.tf) and is told which with REDIS_CLUSTER (run.tf).
  redis_cluster = var.redis_mode == "cluster"
}

resource "google_redis_instance" "store" {
  count                   = local.redis_cluster ? 0 : 1
  name                    = "holepunch-store"
  region                  = var.region
  tier                    = var.redis_tier
  memory_size_gb          = var.redis_memory_gb
  redis_version           = "REDIS_7_0"
  authorized_network      = google_compute_network.vpc.id
  connect_mode            = "DIRECT_PEERING"
  auth_enabled            = true
  transit_encryption_mode = "SERVER_AUTHENTICATION"
  # A full Redis must refuse writes (the service answers 503), never evict live registrations silently.
  redis_configs = {
    "maxmemory-policy" = "noeviction"
  }
  depends_on = [google_project_service.apis]
}
