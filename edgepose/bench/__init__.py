"""Per-device latency benchmarking: timing loop, device fingerprint, SQLite history, readable reports."""
