"""The agent: batched networks, the learner (the losses of SPEC.md), its regularisers, diagnostics,
and the deployable policy with its observation normaliser. Imports nothing but `config`, `errors`
and `paths`: no data loading, no Ray, no MLflow."""
