"""Fine-tuning: tasks, data, the backbone + head model and the run loop (`ptmkit finetune`)."""
