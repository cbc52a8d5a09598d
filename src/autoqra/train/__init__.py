"""Training and scoring: LoRA attached per module (`lora`), the training loop (`loop`), scores of a model on
a split (`scoring`), a fidelity run cached as a record (`fidelity`), the final test evaluation
(`evaluation`)."""
