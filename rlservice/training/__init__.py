"""Offline training in one process: the loop (`trainer`), environment evaluation (`evaluation`) and
checkpoints (`checkpoint`). Builds on `agent` and `data`; no Ray, no MLflow: callers hear of
progress through callbacks."""
