"""Training utilities: optimiser groups, schedules, checkpoints, metrics, previews."""
