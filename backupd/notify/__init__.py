"""Notifications: events from runs, drills and the daemon's checks, sent through one small module per
channel (webhook, Healthchecks, email, Apprise) behind one `send` function each (docs/monitoring.md).

`report` turns outcomes into one message per state change, `deliver` sends with timeouts and keeps what
was not delivered in the catalog's outbox, `channels` builds a job's channels from the config.
"""
