"""Training: the loop, the step's maths, loss terms, optimizer and schedules, checkpoints, metrics."""
