"""HTTP routes: ``topk`` (the operators) and ``probes`` (health, readiness, metrics)."""
