"""Scheduling and monitoring: the scheduler loop and its HTTP endpoints, status, metrics, systemd units."""
