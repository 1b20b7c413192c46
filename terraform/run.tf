resource "google_cloud_run_v2_service" "rendezvous" {
  name     = "holepunch-rendezvous"
  location = var.region
  # Only through the load balancer, so Cloud Armor sees every request.
  ingress = "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER"
  depends_on = [google_secret_manager_secret_iam_member.rendezvous_reads, google_secret_manager_secret_version.redis_url,
  google_project_iam_member.rendezvous_redis_cluster]

  template {
    service_account                  = google_service_account.rendezvous.email
    max_instance_request_concurrency = var.rendezvous_concurrency
    scaling {
      min_instance_count = var.rendezvous_min_instances
      max_instance_count = var.rendezvous_max_instances
    }
    # Direct VPC egress: private traffic (Memorystore) goes into the VPC, the rest straight out.
    vpc_access {
      egress = "PRIVATE_RANGES_ONLY"
      network_interfaces {
        network    = google_compute_network.vpc.id
        subnetwork = google_compute_subnetwork.run.id
      }
    }
    volumes {
      name = "redis-ca"
      secret {
        secret = google_secret_manager_secret.secret["redis_ca"].secret_id
        items {
          version = "latest"
          path    = "ca.pem"
        }
      }
    }
    containers {
      image = local.image
      args  = ["rendezvous"]
      ports {
        container_port = 8080
      }
      env {
        name = "REDIS_URL"
        value_source {
          secret_key_ref {
            secret  = google_secret_manager_secret.secret["redis_url"].secret_id
            version = "latest"
          }
        }
      }
      env {
        # redis_mode cluster: REDIS_URL names the cluster's discovery endpoint, and the store routes by slot
        name  = "REDIS_CLUSTER"
        value = local.redis_cluster ? "true" : "false"
      }
      env {
        # the cluster's AUTH is IAM: each connection presents the service account's access token
        name  = "REDIS_IAM_AUTH"
        value = local.redis_cluster ? "true" : "false"
      }
      env {
        name = "COOKIE_HMAC_KEY"
        value_source {
          secret_key_ref {
            secret  = google_secret_manager_secret.secret["cookie_key"].secret_id
            version = "latest"
          }
        }
      }
      env {
        # the load balancer and Cloud Run's front end each append to X-Forwarded-For
        name  = "TRUSTED_PROXY_HOPS"
        value = "2"
      }
      env {
        # the page dials only the relay Terraform made, never one somebody registered
        name  = "DEMO_RELAY_ADDRS"
        value = local.relay_wss
      }
      volume_mounts {
        name       = "redis-ca"
        mount_path = "/secrets/redis-ca"
      }
      startup_probe {
        http_get {
          path = "/healthz"
        }
      }
      liveness_probe {
        http_get {
          path = "/healthz"
        }
      }
    }
  }
}

# The load balancer's serverless NEG invokes the service as anyone on the internet would; Cloud Armor and
# the ingress setting are what guard it.
resource "google_cloud_run_v2_service_iam_member" "rendezvous_public" {
  name     = google_cloud_run_v2_service.rendezvous.name
  location = var.region
  role     = "roles/run.invoker"
  member   = "allUsers"
}

resource "google_cloud_run_v2_service" "worker" {
  name     = "holepunch-worker"
  location = var.region
  ingress  = "INGRESS_TRAFFIC_INTERNAL_ONLY"

  template {
    service_account = google_service_account.worker.email
    scaling {
      min_instance_count = var.worker_instances
      max_instance_count = max(var.worker_instances, 1)
    }
    containers {
      image = local.image
      args  = ["worker"]
      ports {
        container_port = 8080
      }
      env {
        name  = "RENDEZVOUS_SERVICE_URL"
        value = "https://${var.domain}"
      }
      env {
        # Cloud Run blocks UDP, and a container's ports other than $PORT are unreachable: the worker is a
        # peer behind a NAT that reaches others through the relay it finds at the rendezvous.
        name  = "QUIC_PORT"
        value = "off"
      }
      env {
        # Anyone can register in the relays namespace: the worker trusts the relay by its identity only.
        name  = "RELAY_PEER_IDS"
        value = var.relay_peer_id
      }
      env {
        name  = "LIBP2P_RELAY_BOOTSTRAP"
        value = local.relay_bootstrap
      }
      resources {
        cpu_idle = false # the worker keeps its connections and registration alive between requests
      }
    }
  }
}
