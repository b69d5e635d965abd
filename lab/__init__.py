"""halab: a reproducible high-availability, load-balanced website lab."""
