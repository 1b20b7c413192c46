variable "project_id" {
  description = "The Google Cloud project to deploy into."
  type        = string
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a valid project ID (6-30 lowercase letters, digits and hyphens)."
  }
}

variable "region" {
  description = "Region of Cloud Run, Memorystore, Artifact Registry and the relay VM."
  type        = string
  default     = "europe-west1"
  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]$", var.region))
    error_message = "region must look like europe-west1."
  }
}

variable "domain" {
  description = "DNS name of the rendezvous API and demo page (an A record to the load balancer's address); the managed certificate is issued for it."
  type        = string
  validation {
    condition     = can(regex("^([a-z0-9-]+\\.)+[a-z]{2,}$", var.domain))
    error_message = "domain must be a DNS name such as rendezvous.example.com."
  }
}

variable "relay_domain" {
  description = "DNS name browsers use to reach the relay's WebSocket as wss:// through the load balancer (an A record to the same address)."
  type        = string
  validation {
    condition     = can(regex("^([a-z0-9-]+\\.)+[a-z]{2,}$", var.relay_domain))
    error_message = "relay_domain must be a DNS name such as relay.example.com."
  }
}

variable "relay_peer_id" {
  description = "The relay's libp2p peer ID (12D3KooW...), which workers and the demo page trust it by. Terraform makes the relay's identity but cannot derive an Ed25519 peer ID: after the first apply, read it with `terraform output -raw relay_identity_seed | podman run -i --rm IMAGE python -m shared.identity` and apply again. Empty: workers and the page trust no relay."
  type        = string
  default     = ""
  validation {
    condition     = var.relay_peer_id == "" || can(regex("^12D3KooW[1-9A-HJ-NP-Za-km-z]{44}$", var.relay_peer_id))
    error_message = "relay_peer_id must be an Ed25519 peer ID (12D3KooW followed by 44 base58 characters), or empty."
  }
}

variable "image_tag" {
  description = "Tag of the holepunch-services image in Artifact Registry (Cloud Build deploys $SHORT_SHA; the first apply needs an image pushed by hand or a first build)."
  type        = string
  default     = "latest"
}

variable "redis_mode" {
  description = "Which Memorystore holds the registrations: \"instance\" (one Redis primary, Memorystore for Redis, up to 300 GB) or \"cluster\" (Memorystore for Redis Cluster: shards, for more memory and more commands a second than one primary has). See bench/sizing.py for what each size serves."
  type        = string
  default     = "instance"
  validation {
    condition     = contains(["instance", "cluster"], var.redis_mode)
    error_message = "redis_mode must be instance or cluster."
  }
}

variable "redis_tier" {
  description = "redis_mode instance: Memorystore tier, STANDARD_HA in production (a replica and automatic failover), BASIC for a cheap test."
  type        = string
  default     = "STANDARD_HA"
  validation {
    condition     = contains(["BASIC", "STANDARD_HA"], var.redis_tier)
    error_message = "redis_tier must be BASIC or STANDARD_HA."
  }
}

variable "redis_memory_gb" {
  description = "redis_mode instance: Memorystore capacity in GB (1,200-1,500 bytes per live registration, and registrations stop at 80% of it: see bench/sizing.py)."
  type        = number
  default     = 1
  validation {
    condition     = var.redis_memory_gb >= 1 && var.redis_memory_gb <= 300
    error_message = "redis_memory_gb must lie between 1 and 300."
  }
}

variable "redis_cluster_shards" {
  description = "redis_mode cluster: number of shards (primaries); memory and command throughput grow with it."
  type        = number
  default     = 3
  validation {
    # Memorystore for Redis Cluster takes 1 to 250 shards (250 usage units a cluster, replicas included)
    condition     = var.redis_cluster_shards % 1 == 0 && var.redis_cluster_shards >= 1 && var.redis_cluster_shards <= 250
    error_message = "redis_cluster_shards must be a whole number between 1 and 250."
  }
}

variable "redis_cluster_node_type" {
  description = "redis_mode cluster: node type of every shard (redis-standard-small 6.5 GB, redis-highmem-medium 13 GB, redis-highmem-xlarge 58 GB, ...); redis-shared-core-nano has no SLA: tests only."
  type        = string
  default     = "redis-standard-small"
  validation {
    condition = contains(["redis-shared-core-nano", "redis-standard-small", "redis-highcpu-medium", "redis-highmem-medium",
    "redis-standard-large", "redis-highmem-xlarge", "redis-highmem-2xlarge"], var.redis_cluster_node_type)
    error_message = "redis_cluster_node_type must be one of Memorystore for Redis Cluster's node types, such as redis-standard-small."
  }
}

variable "redis_cluster_replicas" {
  description = "redis_mode cluster: replicas per shard (1 in production: a failover target in another zone; 0 for a cheap test)."
  type        = number
  default     = 1
  validation {
    condition     = contains([0, 1, 2], var.redis_cluster_replicas)
    error_message = "redis_cluster_replicas must be 0, 1 or 2."
  }
}

variable "rendezvous_min_instances" {
  description = "Cloud Run minimum instances of the rendezvous (1 or more avoids cold starts)."
  type        = number
  default     = 1
  validation {
    condition     = var.rendezvous_min_instances >= 0
    error_message = "rendezvous_min_instances must be 0 or more."
  }
}

variable "rendezvous_max_instances" {
  description = "Cloud Run maximum instances of the rendezvous."
  type        = number
  default     = 20
  validation {
    condition     = var.rendezvous_max_instances >= 1 && var.rendezvous_max_instances <= 1000
    error_message = "rendezvous_max_instances must lie between 1 and 1000."
  }
}

variable "rendezvous_concurrency" {
  description = "Requests one rendezvous instance serves at once."
  type        = number
  default     = 250
  validation {
    condition     = var.rendezvous_concurrency >= 1 && var.rendezvous_concurrency <= 1000
    error_message = "rendezvous_concurrency must lie between 1 and 1000."
  }
}

variable "worker_instances" {
  description = "Worker instances on Cloud Run (each registers and connects to the others through the relay)."
  type        = number
  default     = 2
  validation {
    condition     = var.worker_instances >= 0 && var.worker_instances <= 100
    error_message = "worker_instances must lie between 0 and 100."
  }
}

variable "rate_limit_per_minute" {
  description = "Cloud Armor: requests per minute from one client IP before it is banned for 5 minutes."
  type        = number
  default     = 1200
  validation {
    condition     = var.rate_limit_per_minute >= 10
    error_message = "rate_limit_per_minute must be at least 10."
  }
}

variable "allowed_ip_ranges" {
  description = "Optional allow-list: when not empty, only these CIDR ranges reach the rendezvous through the load balancer."
  type        = list(string)
  default     = []
  validation {
    condition     = alltrue([for cidr in var.allowed_ip_ranges : can(cidrhost(cidr, 0))])
    error_message = "allowed_ip_ranges must hold CIDR ranges such as 203.0.113.0/24."
  }
}

variable "relay_machine_type" {
  description = "Machine type of the relay VM."
  type        = string
  default     = "e2-small"
}

variable "relay_zone" {
  description = "Zone of the relay VM, in var.region."
  type        = string
  default     = "europe-west1-b"
}
