output "service_url" {
  description = "The rendezvous API and demo page, once the DNS record and the managed certificate are live."
  value       = "https://${var.domain}"
}

output "load_balancer_ip" {
  description = "Point A records for var.domain and var.relay_domain here."
  value       = google_compute_global_address.lb.address
}

output "relay_multiaddr" {
  description = "The relay's TCP address; its peer ID is var.relay_peer_id (see the output relay_identity_seed)."
  value       = "/ip4/${google_compute_address.relay.address}/tcp/4001"
}

output "relay_wss" {
  description = "What browsers dial: the relay's WebSocket through the load balancer."
  value       = "/dns4/${var.relay_domain}/tcp/443/wss"
}

output "artifact_registry" {
  description = "Where Cloud Build pushes the image."
  value       = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}"
}

output "relay_identity_seed" {
  description = "The relay's identity seed (a secret), to derive its peer ID for var.relay_peer_id: pipe it to `python -m shared.identity` in the image."
  value       = random_id.relay_seed.b64_std
  sensitive   = true
}
