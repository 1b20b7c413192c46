# redis_mode cluster: Memorystore for Redis Cluster, for more memory and more commands a second than one
# primary has (bench/sizing.py). The rendezvous already runs on Redis Cluster (REDIS_CLUSTER=true).

# Memorystore for Redis Cluster is reached through Private Service Connect: this policy lets it create its
# endpoints in the VPC, in the subnet below, and the cluster's network must be the policy's.
resource "google_network_connectivity_service_connection_policy" "redis" {
  count         = local.redis_cluster ? 1 : 0
  name          = "holepunch-redis"
  location      = var.region
  service_class = "gcp-memorystore-redis"
  network       = google_compute_network.vpc.id
  description   = "Private Service Connect endpoints of the holepunch Memorystore for Redis Cluster"
  psc_config {
    subnetworks = [google_compute_subnetwork.redis[0].id]
  }
  depends_on = [google_project_service.apis]
}

resource "google_redis_cluster" "store" {
  count         = local.redis_cluster ? 1 : 0
  name          = "holepunch-store"
  region        = var.region
  shard_count   = var.redis_cluster_shards
  node_type     = var.redis_cluster_node_type
  replica_count = var.redis_cluster_replicas
  # Memorystore for Redis Cluster has no AUTH password: its AUTH takes an IAM access token of a principal
  # granted roles/redis.dbConnectionUser (iam.tf), so no credential is stored anywhere.
  authorization_mode      = "AUTH_MODE_IAM_AUTH"
  transit_encryption_mode = "TRANSIT_ENCRYPTION_MODE_SERVER_AUTHENTICATION"
  redis_configs = {
    "maxmemory-policy" = "noeviction"
  }
  psc_configs {
    network = google_compute_network.vpc.id
  }
  lifecycle {
    precondition {
      # a cluster holds at most 250 usage units: shards times (1 + replicas)
      condition     = var.redis_cluster_shards * (1 + var.redis_cluster_replicas) <= 250
      error_message = "redis_cluster_shards x (1 + redis_cluster_replicas) must not exceed 250."
    }
  }
  depends_on = [google_network_connectivity_service_connection_policy.redis]
}
