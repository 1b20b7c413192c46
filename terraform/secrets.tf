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

# The instance's URL carries its AUTH string; the cluster's carries none (the rendezvous authenticates with an
# IAM access token of its own service account) and names the discovery endpoint, from which a cluster client
# learns every shard.
resource "google_secret_manager_secret_version" "redis_url" {
  secret = google_secret_manager_secret.secret["redis_url"].id
  secret_data = (local.redis_cluster
    ? "rediss://${google_redis_cluster.store[0].discovery_endpoints[0].address}:${google_redis_cluster.store[0].discovery_endpoints[0].port}/0?ssl_ca_certs=/secrets/redis-ca/ca.pem"
  : "rediss://:${google_redis_instance.store[0].auth_string}@${google_redis_instance.store[0].host}:${google_redis_instance.store[0].port}/0?ssl_ca_certs=/secrets/redis-ca/ca.pem")
}

resource "google_secret_manager_secret_version" "redis_ca" {
  secret = google_secret_manager_secret.secret["redis_ca"].id
  secret_data = (local.redis_cluster
    ? join("\n", flatten([for ca in google_redis_cluster.store[0].managed_server_ca[0].ca_certs : ca.certificates]))
  : join("\n", [for cert in google_redis_instance.store[0].server_ca_certs : cert.cert]))
}

resource "google_secret_manager_secret_version" "cookie_key" {
  secret      = google_secret_manager_secret.secret["cookie_key"].id
  secret_data = random_password.cookie_key.result
}

resource "google_secret_manager_secret_version" "relay_identity" {
  secret      = google_secret_manager_secret.secret["relay_identity"].id
  secret_data = random_id.relay_seed.b64_std
}
