"""One machine's runtime: per-GPU workers, connectors, health server, supervision, logs."""
