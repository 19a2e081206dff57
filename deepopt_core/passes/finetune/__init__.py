"""The `finetune` pass: LoRA, bottleneck adapters, prefix tuning and full fine-tuning."""
