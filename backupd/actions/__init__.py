"""What the CLI verbs do, on top of the sources and the store: run, restore, drill, check-config --connect."""
