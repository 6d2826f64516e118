"""abft: Attention Behavior Fine-Tuning."""
