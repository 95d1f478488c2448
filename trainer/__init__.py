"""Training only: arguments, curricula, the Trainer subclass and its callbacks, LoRA / QLoRA set-up."""
