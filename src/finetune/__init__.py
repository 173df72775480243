"""finetune: fine-tune a pretrained GPT-2 on downstream NLP tasks (Hydra -> data -> model -> Accelerate loop -> metrics)."""
