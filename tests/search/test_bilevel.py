"""The generic architecture-step hook: moments survive a state round trip; the architecture pass computes
the full-backward architecture gradient and nothing else; grad flags are restored."""

import contextlib

import pytest
import torch

from recdim.search.bilevel import (
    BilevelConfig,
    BilevelHook,
    arch_batch_size,
    average_over_ranks,
    exclude_from_training,
    requires_grad_scope,
)


class _Provider:
    def __init__(self):
        self.p = torch.nn.Parameter(torch.ones(3))

    def arch_parameters(self):
        return [self.p]


def test_adam_state_exists_before_the_first_step_and_round_trips():
    a, b = BilevelHook(_Provider(), None, BilevelConfig()), BilevelHook(_Provider(), None, BilevelConfig())
    template = b.state_dict()
    assert set(template["optimizer"]["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    a.params[0].grad = torch.tensor([1.0, -2.0, 0.5])
    a.optimizer.step()
    a.arch_steps = 1
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b.optimizer.state[b.params[0]]["exp_avg"], a.optimizer.state[a.params[0]]["exp_avg"])
    # A fresh hook's first step equals a fresh Adam's first step.
    c, ref = BilevelHook(_Provider(), None, BilevelConfig(arch_lr=0.1)), torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([ref], lr=0.1)
    for g in (torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.3, 0.1, -1.0])):
        c.params[0].grad, ref.grad = g.clone(), g.clone()
        c.optimizer.step()
        opt.step()
    torch.testing.assert_close(c.params[0].detach(), ref.detach())


# ---- the architecture pass --------------------------------------------------------------------------------


class _ScaledProvider(torch.nn.Module):
    """A provider stand-in: a frozen-table lookup (``emb``) scaled by one architecture vector."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(10, 4)
        self.p = torch.nn.Parameter(torch.rand(4))
        self.frozen = False

    def arch_parameters(self):
        return [self.p]

    @contextlib.contextmanager
    def frozen_tables(self):
        self.frozen = True
        try:
            yield
        finally:
            self.frozen = False

    def forward(self, ids):
        e = self.emb(ids)
        return (e.detach() if self.frozen else e) * self.p


class _Trainer:
    def __init__(self):
        self.provider = _ScaledProvider()
        self.model = torch.nn.Sequential(self.provider, torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        self.epoch = 0

    def loss(self, ids):
        return self.model(ids).pow(2).mean()


def test_requires_grad_scope_sets_and_restores_flags():
    a, b, c = (torch.nn.Parameter(torch.ones(2)) for _ in range(3))
    a.requires_grad_(False)
    with requires_grad_scope([a], [b]):
        assert a.requires_grad and not b.requires_grad and c.requires_grad
    assert not a.requires_grad and b.requires_grad and c.requires_grad
    with pytest.raises(RuntimeError), requires_grad_scope([a], [b]):
        raise RuntimeError  # restored on errors too
    assert not a.requires_grad and b.requires_grad


@pytest.mark.parametrize("excluded", [True, False])
def test_arch_gradient_is_the_full_backward_one_and_computes_nothing_else(excluded):
    trainer = _Trainer()
    provider = trainer.provider
    ids = torch.tensor([1, 4, 4, 7, 9])
    with provider.frozen_tables():
        trainer.loss(ids).backward()  # the original formulation: every gradient
    want = provider.p.grad.clone()
    trainer.model.zero_grad(set_to_none=True)
    if excluded:
        exclude_from_training(provider)
        assert not provider.p.requires_grad
    hook = BilevelHook(provider, None, BilevelConfig())
    hook.arch_gradient(trainer, ids)
    torch.testing.assert_close(provider.p.grad, want, rtol=0, atol=1e-7)
    for name, q in trainer.model.named_parameters():
        if q is not provider.p:
            assert q.grad is None and q.requires_grad, name  # no weight gradient, flags restored
    assert provider.p.requires_grad is not excluded
    average_over_ranks(hook.params)  # one process, no group: unchanged
    torch.testing.assert_close(provider.p.grad, want, rtol=0, atol=1e-7)


def test_after_step_takes_one_adam_step_and_clears_the_gradient():
    trainer = _Trainer()
    provider = trainer.provider
    exclude_from_training(provider)

    class _Val:
        def epoch(self, e):
            return iter([torch.tensor([1, 2, 3]), torch.tensor([4, 5])])

    hook = BilevelHook(provider, _Val(), BilevelConfig(arch_lr=0.1, update_every=2))
    before = provider.p.detach().clone()
    hook.after_step(trainer, 1, None)  # not due
    assert torch.equal(provider.p.detach(), before) and hook.arch_steps == 0
    hook.after_step(trainer, 2, None)
    assert hook.arch_steps == 1 and provider.p.grad is None
    assert torch.allclose((provider.p.detach() - before).abs(), torch.full((4,), 0.1), atol=1e-6)  # lr * sign


def test_a_restored_hook_continues_the_validation_stream_where_it_was():
    """Batches drawn after a state round trip are the ones an uninterrupted hook draws next, mid-pass and
    across a pass boundary (resume is bit-identical)."""
    import numpy as np

    from recdim.data.loader import TrainLoader
    from recdim.data.prepared import SparseColumn, SplitArrays

    n = 23
    val = SplitArrays(
        labels=np.arange(n, dtype=np.float32),
        dense=np.zeros((n, 0), np.float32),
        sparse={"a": SparseColumn(np.arange(n, dtype=np.int64), np.arange(n + 1, dtype=np.int64))},
    )
    loader = TrainLoader(val, ["a"], 4, seed=3)  # 5 batches a pass
    whole = BilevelHook(_Provider(), loader, BilevelConfig())
    expected = [whole.next_val_batch().labels.tolist() for _ in range(14)]
    for cut in (3, 5, 7):
        first = BilevelHook(_Provider(), loader, BilevelConfig())
        got = [first.next_val_batch().labels.tolist() for _ in range(cut)]
        resumed = BilevelHook(_Provider(), loader, BilevelConfig())
        resumed.load_state_dict(first.state_dict())
        got += [resumed.next_val_batch().labels.tolist() for _ in range(14 - cut)]
        assert got == expected, cut


def test_arch_batch_size_caps_the_validation_batch():
    from recdim.config.autodim import AutoDimConfig
    from recdim.config.dnis import DNISConfig

    assert arch_batch_size(4096, 1024, 40_000, 1) == 1024
    assert arch_batch_size(512, 1024, 40_000, 1) == 512  # small training batches: unchanged
    assert arch_batch_size(4096, 0, 40_000, 1) == 4096  # 0: the training batch
    assert arch_batch_size(4096, 1024, 700, 2) == 700  # no more than the split, whole rows per rank
    assert arch_batch_size(4096, 1023, 40_000, 2) == 1022
    with pytest.raises(ValueError, match="too few"):
        arch_batch_size(4096, 1024, 1, 2)
    assert DNISConfig().val_batch_size == AutoDimConfig().val_batch_size == 1024
    for make in (DNISConfig, AutoDimConfig):
        with pytest.raises(ValueError, match="val_batch_size"):
            make(val_batch_size=-1)
