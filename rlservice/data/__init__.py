"""Data: Minari reading and writing, the offline and online replay buffers, reference scores.
Builds on `agent` (the batch it samples, the normaliser it fits); no Ray, no MLflow."""
