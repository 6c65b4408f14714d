"""Client-level differential privacy: clipping, noise and the accountant."""
