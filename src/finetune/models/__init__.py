"""Model: a GPT-2 backbone from transformers plus one task head."""
