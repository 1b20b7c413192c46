# One service account per role, each granted only what that role reads or writes.
resource "google_service_account" "rendezvous" {
  account_id   = "holepunch-rendezvous"
  display_name = "holepunch rendezvous (Cloud Run)"
}

resource "google_service_account" "worker" {
  account_id   = "holepunch-worker"
  display_name = "holepunch worker (Cloud Run)"
}

resource "google_service_account" "relay" {
  account_id   = "holepunch-relay"
  display_name = "holepunch relay (VM)"
}

resource "google_secret_manager_secret_iam_member" "rendezvous_reads" {
  for_each  = toset(["redis_url", "redis_ca", "cookie_key"])
  secret_id = google_secret_manager_secret.secret[each.value].id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.rendezvous.email}"
}

# redis_mode cluster: the rendezvous authenticates to Memorystore for Redis Cluster with its own IAM identity.
# The role is granted on the project, as Memorystore expects, but the condition confines it to this cluster.
resource "google_project_iam_member" "rendezvous_redis_cluster" {
  count   = local.redis_cluster ? 1 : 0
  project = var.project_id
  role    = "roles/redis.dbConnectionUser"
  member  = "serviceAccount:${google_service_account.rendezvous.email}"
  condition {
    title       = "holepunch-store only"
    description = "Connect to the holepunch Memorystore for Redis Cluster, no other"
    expression  = "resource.name == \"${google_redis_cluster.store[0].id}\""
  }
}

resource "google_secret_manager_secret_iam_member" "relay_reads" {
  secret_id = google_secret_manager_secret.secret["relay_identity"].id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.relay.email}"
}

resource "google_artifact_registry_repository_iam_member" "relay_pulls" {
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.reader"
  member     = "serviceAccount:${google_service_account.relay.email}"
}

resource "google_project_iam_member" "logs_and_metrics" {
  for_each = {
    for pair in setproduct(["rendezvous", "worker", "relay"], ["roles/logging.logWriter", "roles/monitoring.metricWriter"]) :
    "${pair[0]}-${pair[1]}" => { account = pair[0], role = pair[1] }
  }
  project = var.project_id
  role    = each.value.role
  member  = "serviceAccount:${ { rendezvous = google_service_account.rendezvous.email, worker = google_service_account.worker.email, relay = google_service_account.relay.email }[each.value.account]}"
}
