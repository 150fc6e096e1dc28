"""The backup store and what reads or trims it: layout and manifests, catalog, verification, retention, S3."""
