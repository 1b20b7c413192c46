terraform {
  required_version = ">= 1.6"
  required_providers {
    # ~> 8.7: 8.7.0 is the release whose schema tests/tf_schema.py checks this configuration against (the
    # provider cannot be downloaded where the tests run; its schema can, from the CDK Terrain bindings on
    # PyPI). A pin that admits an unchecked major would let `terraform init` pick arguments never validated.
    google = {
      source  = "hashicorp/google"
      version = "~> 8.7"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}
