resource "random_password" "cookie_key" {
  length  = 48
  special = false
}

# The relay's fixed libp2p identity: a 32-byte Ed25519 seed, base64 (IDENTITY_KEY's format).
resource "random_id" "relay_seed" {
  byte_length = 32
}

resource "google_secret_manager_secret" "secret" {
  for_each  = local.secrets
  secret_id = "holepunch-${each.value}"
  replication {
    auto {}
  }
  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret_version" "redis_url" {
  secret      = google_secret_manager_secret.secret["redis_url"].id
  secret_data = "rediss://:${google_redis_instance.store.auth_string}@${google_redis_instance.store.host}:${google_redis_instance.store.port}/0?ssl_ca_certs=/secrets/redis-ca/ca.pem"
}

resource "google_secret_manager_secret_version" "redis_ca" {
  secret      = google_secret_manager_secret.secret["redis_ca"].id
  secret_data = join("\n", [for cert in google_redis_instance.store.server_ca_certs : cert.cert])
}

resource "google_secret_manager_secret_version" "cookie_key" {
  secret      = google_secret_manager_secret.secret["cookie_key"].id
  secret_data = random_password.cookie_key.result
}

resource "google_secret_manager_secret_version" "relay_identity" {
  secret      = google_secret_manager_secret.secret["relay_identity"].id
  secret_data = random_id.relay_seed.b64_std
}
