"""backupd: backup orchestrator with verified archives, retention, S3 copies and restore drills."""

__version__ = "0.1.0"
