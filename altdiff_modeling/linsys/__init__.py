"""Linear systems with H = P + sigma I + C'RC: the interface and its implementations."""
