resource "google_compute_security_policy" "edge" {
  name        = "holepunch-edge"
  description = "Rate-based ban per client IP and the preconfigured WAF rules, in front of the rendezvous and the relay's wss://"

  dynamic "rule" {
    for_each = length(var.allowed_ip_ranges) > 0 ? [1] : []
    content {
      priority    = 100
      action      = "deny(403)"
      description = "Allow-list: everyone outside var.allowed_ip_ranges is refused"
      match {
        expr {
          expression = "!(${join(" || ", [for cidr in var.allowed_ip_ranges : "inIpRange(origin.ip, '${cidr}')"])})"
        }
      }
    }
  }

  rule {
    priority    = 200
    action      = "deny(404)"
    description = "Prometheus metrics are for the Managed Prometheus sidecar on localhost, not the internet"
    match {
      expr {
        expression = "request.path.lower().startsWith('/metrics')"
      }
    }
  }

  rule {
    priority    = 1000
    action      = "deny(403)"
    description = "WAF: SQL injection"
    match {
      expr {
        expression = "evaluatePreconfiguredWaf('sqli-v33-stable', {'sensitivity': 1})"
      }
    }
  }

  rule {
    priority    = 1001
    action      = "deny(403)"
    description = "WAF: cross-site scripting"
    match {
      expr {
        expression = "evaluatePreconfiguredWaf('xss-v33-stable', {'sensitivity': 1})"
      }
    }
  }

  rule {
    priority    = 1002
    action      = "deny(403)"
    description = "WAF: local file inclusion"
    match {
      expr {
        expression = "evaluatePreconfiguredWaf('lfi-v33-stable', {'sensitivity': 1})"
      }
    }
  }

  rule {
    priority    = 1003
    action      = "deny(403)"
    description = "WAF: remote code execution"
    match {
      expr {
        expression = "evaluatePreconfiguredWaf('rce-v33-stable', {'sensitivity': 1})"
      }
    }
  }

  rule {
    priority    = 1004
    action      = "deny(403)"
    description = "WAF: Log4j (CVE-2021-44228) and other CVEs"
    match {
      expr {
        expression = "evaluatePreconfiguredWaf('cve-canary')"
      }
    }
  }

  rule {
    priority    = 2000
    action      = "rate_based_ban"
    description = "More than var.rate_limit_per_minute requests a minute from one IP: 429, then a 5-minute ban"
    match {
      versioned_expr = "SRC_IPS_V1"
      config {
        src_ip_ranges = ["*"]
      }
    }
    rate_limit_options {
      conform_action   = "allow"
      exceed_action    = "deny(429)"
      enforce_on_key   = "IP"
      ban_duration_sec = 300
      rate_limit_threshold {
        count        = var.rate_limit_per_minute
        interval_sec = 60
      }
    }
  }

  rule {
    priority    = 2147483647
    action      = "allow"
    description = "Default: allow"
    match {
      versioned_expr = "SRC_IPS_V1"
      config {
        src_ip_ranges = ["*"]
      }
    }
  }
}
