"""The demo and what it needs: sample content, and the servers only tests and the demo start (sshd, S3)."""
