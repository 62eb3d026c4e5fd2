"""Evaluation: validation loss over named sets (loss) and exact match on prompt/answer tasks (tasks)."""
