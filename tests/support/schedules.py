"""[refresh] snippets for end-to-end configs: how often the daemon checks on its own."""

# No scheduled check during a test unless it asks for one (the first run is at a per-host
# offset within the interval), and no scheduled retry after a failed check: each test's
# checks are the ones it forces, so only forced checks reach the backend.
NO_SCHEDULE = """
interval = "24h"
backoff_min = "24h"
backoff_max = "24h"
"""
# Scheduled checks every second, retried quickly after a failure.
FAST_SCHEDULE = """
interval = "1s"
jitter = 0.0
backoff_min = "100ms"
backoff_max = "300ms"
"""
