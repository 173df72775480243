"""The Accelerate training loop, its optimizer, checkpoints and evaluation."""
