# The operator's picture in Cloud Monitoring (PromQL over Google Cloud Managed Service for Prometheus); the
# same panels for Grafana are in dashboards/grafana.json. Both read the /metrics of every role.
resource "google_monitoring_dashboard" "holepunch" {
  dashboard_json = file("${path.module}/dashboards/cloud-monitoring.json")
  depends_on     = [google_project_service.apis]
}
