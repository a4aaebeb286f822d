"""Operations: Prometheus metrics, the access log, readiness and the admin endpoints."""
