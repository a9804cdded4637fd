"""The processing core: wire events, the error tree, the pure pipeline, cancelling with retries."""
