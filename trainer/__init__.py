"""Training: data loading, the embedded grounded world, collators, curricula, Trainer subclass (issue 3)."""
