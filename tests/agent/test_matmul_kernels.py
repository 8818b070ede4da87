"""The oneDNN route of the learner's matmuls (rlservice.agent.matmul) computes what ATen computes:
forward, every gradient, whole learner steps and checkpoints; and the choice falls back to ATen."""

import copy
import io

import pytest
import torch
from batches import random_batch

import rlservice.agent.learner as learner_module
from rlservice.agent import matmul
from rlservice.agent import networks as networks_module
from rlservice.agent.learner import Learner
from rlservice.agent.networks import (
    Actor,
    BatchedLinear,
    CriticEnsemble,
    ValueNet,
    use_matmul,
)
from rlservice.config.run import AgentConfig, TrainConfig

pytestmark = pytest.mark.skipif(not matmul.onednn_available(), reason="this torch build has no oneDNN")

FP32 = dict(rtol=1e-4, atol=1e-5)


def kernels_of(net: torch.nn.Module) -> set[str]:
    return {m.kernel for m in net.modules() if isinstance(m, BatchedLinear)}


def test_member_linear_against_float64_and_through_torch_library_checks():
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*s, generator=g, requires_grad=True) for s in ((3, 7, 5), (3, 5, 4), (3, 1, 4)))
    got = matmul.batched_linear("onednn", x, w, b)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    expected = b64 + x64 @ w64  # per member: bias + x W
    torch.testing.assert_close(got.double(), expected, **FP32)
    grad = torch.randn(got.shape, generator=g)
    for a, e in zip(torch.autograd.grad(got, (x, w, b), grad), torch.autograd.grad(expected, (x64, w64, b64), grad.double())):
        torch.testing.assert_close(a.double(), e, **FP32)
    # Fake (meta) kernel, registered autograd and torch.compile's view of the op agree with it.
    torch.library.opcheck(matmul.member_linear, (x, w.mT, b))
    torch.library.opcheck(matmul.member_linear, (x, w.mT, None))


def networks():
    torch.manual_seed(0)
    return {
        "actor (plain)": (Actor(2, 5, 3, 16, 2, layernorm=False), lambda: (torch.randn(2, 9, 5),)),
        "actor (LayerNorm)": (Actor(2, 5, 3, 16, 2, layernorm=True), lambda: (torch.randn(2, 9, 5),)),
        "ensemble of 4, 2 seeds": (CriticEnsemble(2, 4, 5, 3, 16, 2, layernorm=True),
                                   lambda: (torch.randn(2, 9, 5), torch.rand(2, 9, 3))),
        "ensemble subset": (CriticEnsemble(2, 4, 5, 3, 16, 3, layernorm=False),
                            lambda: (torch.randn(2, 9, 5), torch.rand(2, 9, 3), torch.tensor([[3, 1], [0, 2]]))),
        "value": (ValueNet(3, 5, 16, 2), lambda: (torch.randn(3, 9, 5),)),
    }


@pytest.mark.parametrize("kind", list(networks()))
def test_onednn_network_matches_aten_forward_and_every_gradient(kind):
    net, inputs = networks()[kind]
    args = inputs()
    aten, onednn = use_matmul(net, "aten"), use_matmul(copy.deepcopy(net), "onednn")
    assert kernels_of(onednn) == {"onednn"}
    outs = [n(*args) for n in (aten, onednn)]
    torch.testing.assert_close(outs[1], outs[0], **FP32)
    grad = torch.randn_like(outs[0])
    for n, out in zip((aten, onednn), outs):
        out.backward(grad)
    named = dict(onednn.named_parameters())
    for name, p in aten.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        torch.testing.assert_close(named[name].grad, p.grad, **FP32, msg=f"{kind}: {name}")


CONFIGS = {
    "td3bc": dict(num_critics=2, critic_layernorm=False, bc_weight=0.4),
    "pars, 5 critics, LayerNorm, PA, PANI": dict(num_critics=5, target_subset=2, critic_layernorm=True, pa_alpha=1e-3,
                                                 noise_sigma=0.1),
    "dmg with V": dict(dmg_lambda=0.25, awr_temperature=3.0, awr_max_weight=3.0, bc_weight=0.1),
}


def learner(knobs: dict, kernel: str, seeds: int = 2, seed_group: int | None = None) -> Learner:
    cfg = AgentConfig(critic_hidden=16, actor_hidden=12, policy_freq=2, **knobs)
    return Learner(cfg, 5, 3, reward_min=-1.0, seeds=seeds, seed=3, matmul=kernel, seed_group=seed_group)


def assert_same_state(a: Learner, b: Learner) -> None:
    for name, net in a.networks().items():
        torch.testing.assert_close(b.networks()[name].state_dict(), net.state_dict(), **FP32, msg=name)


@pytest.mark.parametrize("kind", list(CONFIGS))
@pytest.mark.parametrize("seed_group", [None, 1])
def test_learner_steps_on_onednn_match_aten(kind, seed_group):
    aten, onednn = (learner(CONFIGS[kind], k, seed_group=seed_group) for k in ("aten", "onednn"))
    assert (aten.matmul, onednn.matmul) == ("aten", "onednn")
    assert all(kernels_of(n) == {"onednn"} for n in onednn.networks().values())
    batch = random_batch(2, 16, 5, 3)
    for _ in range(2):  # a critic step, then one with the actor and the targets
        torch.testing.assert_close(onednn.update(batch), aten.update(batch), **FP32)
    assert_same_state(aten, onednn)


@pytest.mark.parametrize("saved_on,loaded_on", [("onednn", "aten"), ("aten", "onednn")])
def test_checkpoint_from_one_kernel_continues_on_the_other(saved_on, loaded_on):
    knobs = CONFIGS["pars, 5 critics, LayerNorm, PA, PANI"]
    first, batch = learner(knobs, saved_on), random_batch(2, 16, 5, 3)
    for _ in range(3):
        first.update(batch)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    state = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    tensors = [t for net in first.networks() for t in state[net].values()]
    assert all(t.layout == torch.strided and not t.is_mkldnn for t in tensors)  # plain state_dicts
    second = learner(knobs, loaded_on)
    second.load_state_dict(state)
    for _ in range(3):
        torch.testing.assert_close(second.update(batch), first.update(batch), **FP32)
    assert_same_state(first, second)


def test_choice_falls_back_to_aten_without_onednn_or_off_the_cpu(monkeypatch):
    assert learner_module.matmul_kernel("onednn", "cuda") == learner_module.matmul_kernel("auto", "cuda") == "aten"
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert learner_module.matmul_kernel("onednn", "cpu") == learner_module.matmul_kernel("auto", "cpu") == "aten"
    lrn = learner(CONFIGS["td3bc"], "onednn")
    assert lrn.matmul == "aten" and all(kernels_of(n) == {"aten"} for n in lrn.networks().values())
    lrn.update(random_batch(2, 16, 5, 3))


def test_auto_picks_the_kernel_whose_steps_measured_faster(monkeypatch):
    """A clock that only the slow kernel's layers advance: the choice must follow the clock."""
    real, clock = networks_module.batched_linear, [0.0]
    monkeypatch.setattr(learner_module.time, "perf_counter", lambda: clock[0])
    for slow, fast in (("aten", "onednn"), ("onednn", "aten")):
        def timed(kernel, *args, slow=slow):
            clock[0] += kernel == slow
            return real(kernel, *args)
        monkeypatch.setattr(networks_module, "batched_linear", timed)
        assert learner_module.fastest_cpu_kernel.__wrapped__(hidden=16, repeats=1) == fast
    monkeypatch.undo()
    assert learner_module.matmul_kernel("auto", "cpu") in ("aten", "onednn")


def test_train_config_takes_a_kernel_and_rejects_others():
    assert TrainConfig().matmul == "aten" and TrainConfig(matmul="onednn").matmul == "onednn"
    with pytest.raises(ValueError):
        TrainConfig(matmul="mkl")
