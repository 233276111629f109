"""cl-runner: config-driven contrastive representation learning on images."""
