"""Everything Ray: sessions, the Tune trial, evaluator and rollout actors, Tune + Optuna, Jobs API
submission and the local multi-node cluster. Builds on `tracking`, `training`, `agent` and `data`;
knows nothing of loss formulas."""
