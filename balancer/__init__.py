"""halab balancer: round robin over the web tier, health checks, instant ejection."""
