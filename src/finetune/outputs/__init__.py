"""What a run writes besides checkpoints: environment record, curves, model card, prediction files."""
