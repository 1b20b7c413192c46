locals {
  image   = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}/holepunch-services:${var.image_tag}"
  secrets = { redis_url = "redis-url", redis_ca = "redis-ca", cookie_key = "cookie-hmac-key", relay_identity = "relay-identity" }
  # Google's load balancer health checks and proxies come from these ranges.
  google_lb_ranges = ["35.191.0.0/16", "130.211.0.0/22"]
}

# networkconnectivity and serviceconsumermanagement serve redis_mode cluster's Private Service Connect
# (redis_cluster.tf); enabled in either mode, as enabling an API grants nobody anything.
resource "google_project_service" "apis" {
  for_each           = toset(["run.googleapis.com", "redis.googleapis.com", "compute.googleapis.com", "artifactregistry.googleapis.com", "secretmanager.googleapis.com", "cloudbuild.googleapis.com", "iam.googleapis.com", "monitoring.googleapis.com", "networkconnectivity.googleapis.com", "serviceconsumermanagement.googleapis.com"])
  service            = each.value
  disable_on_destroy = false
}

resource "google_artifact_registry_repository" "images" {
  # checkov:skip=CKV_GCP_84: images hold no secrets; Google-managed encryption at rest is enough, and a customer key would need key management of its own
  repository_id = "holepunch-services"
  location      = var.region
  format        = "DOCKER"
  description   = "Images of the rendezvous, worker and relay"
  depends_on    = [google_project_service.apis]
}
