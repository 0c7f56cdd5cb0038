"""The training-config schema (torch-free) and the one shared FSDP2/LoRA fine-tuning engine."""
