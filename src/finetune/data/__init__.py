"""Data: load a task's splits, standardise its columns, format and tokenize, collate batches."""
