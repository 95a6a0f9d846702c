"""Models: the pre-training model (encoder + objectives + momentum teacher)."""
