"""Training: data loading, the embedded grounded world, collators, curricula, the Trainer subclass, masked LoRA."""
