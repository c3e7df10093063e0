"""Data: sources (host, uint8), the batch pipeline, and on-device augmentation."""
