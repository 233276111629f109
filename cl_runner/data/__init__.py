"""Data: files -> uint8 tensors (datasets), batched augmentation (augment), tuples to train on (pairing)."""
