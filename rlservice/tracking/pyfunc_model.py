"""The registered policy, as an MLflow "models from code" file.

MLflow stores this file as the model's code and runs it when the model is loaded; the weights
come from the logged checkpoint artifact (state.pt read with weights_only=True and config.json),
so loading a registered model never unpickles anything. rlservice must be importable there.

    mlflow.pyfunc.load_model("models:/NAME@champion").predict(observations)

takes raw observations [B, obs_dim] (array or DataFrame) and returns actions [B, act_dim] in the
environment's units, the same as the trainer's `Policy.act`.
"""

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class PolicyModel(PythonModel):
    def load_context(self, context):
        from rlservice.tracking.export import policy_from_checkpoint
        from rlservice.tracking.registry import CHECKPOINT_ARTIFACT

        seed_index = (context.model_config or {}).get("seed_index", 0)
        self.policy = policy_from_checkpoint(context.artifacts[CHECKPOINT_ARTIFACT], seed_index)

    # The ndarray hint tells MLflow to pass inputs through untouched (DataFrames too) and not to
    # infer a schema: float32 and float64 observations are both valid.
    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        observations = np.atleast_2d(np.asarray(model_input))
        if observations.dtype.kind != "f":
            observations = observations.astype(np.float64)
        return self.policy.act(observations)


mlflow.models.set_model(PolicyModel())
