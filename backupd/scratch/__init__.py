"""Throwaway database servers on loopback ports: the restore drills' scratch targets (also used by the demo and
the tests). Test-only servers (sshd, S3) live in `backupd.lab`."""
