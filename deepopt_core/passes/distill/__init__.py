"""The `distill` pass: knowledge distillation into a smaller student."""
