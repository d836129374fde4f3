"""Cython hot paths: rate-limit buckets and the scheduler core."""
