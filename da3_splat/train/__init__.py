"""Training: losses, learning-rate schedules and crash-safe checkpoints."""
