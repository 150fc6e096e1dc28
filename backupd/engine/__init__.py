"""One run's machinery below the sources: compression, the streaming artifact pipeline, processes, SSH."""
