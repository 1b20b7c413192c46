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
