"""`rlservice models export`: standalone TorchScript / ONNX policies act like `Policy.act`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlservice.cli import main
from rlservice.training.trainer import Trainer


@pytest.fixture(scope="module")
def expected(trained, hopper_observations, tmp_path_factory):
    observations = hopper_observations
    policy = Trainer.from_checkpoint(trained.run_dir / "best", run_dir=tmp_path_factory.mktemp("export")).policies()[0]
    return observations, policy.act(observations)


def export(uri: str, fmt: str, out) -> int:
    return main(["models", "export", "policy-under-test@champion", "--format", fmt, "--out", str(out), "--tracking-uri", uri])


def test_torchscript_export_acts_like_the_policy(registered, mlflow_server, expected, tmp_path):
    observations, actions = expected
    assert export(mlflow_server.uri, "torchscript", tmp_path / "policy.pt") == 0
    module = torch.jit.load(str(tmp_path / "policy.pt"))
    with torch.no_grad():
        got = module(torch.from_numpy(observations)).numpy()
    assert np.array_equal(got, actions)


def test_onnx_export_acts_like_the_policy(registered, mlflow_server, expected, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    observations, actions = expected
    assert export(mlflow_server.uri, "onnx", tmp_path / "policy.onnx") == 0
    session = ort.InferenceSession(str(tmp_path / "policy.onnx"))
    got = session.run(["actions"], {"observations": observations.astype(np.float32)})[0]
    np.testing.assert_allclose(got, actions, rtol=0, atol=1e-5)


def test_export_of_unknown_model_is_one_line(registered, mlflow_server, tmp_path, capsys):
    code = main(["models", "export", "policy-under-test@nope", "--format", "onnx", "--out", str(tmp_path / "x"),
                 "--tracking-uri", mlflow_server.uri])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model 'policy-under-test@nope' not found") and err.count("\n") == 1
