"""The generic architecture-step hook: moments survive a state round trip."""

import torch

from recdim.search.bilevel import BilevelConfig, BilevelHook


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
