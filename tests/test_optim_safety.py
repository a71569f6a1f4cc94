"""Parameter groups, the warmup + cosine schedule, and the non-finite loss guard."""

import math

import pytest
import torch
from torch import nn

from vl.lit.optim import OptimConfig, build_optimizer, param_groups, warmup_cosine
from vl.lit.safety import NonFiniteGuard, NonFiniteLossError


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.proj = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.text = nn.Linear(4, 4)  # plays a pretrained part


def test_param_groups_decay_and_pretrained_lr():
    model = Toy()
    cfg = OptimConfig(lr=1.0, pretrained_lr_scale=0.1, weight_decay=0.05)
    groups = {g["name"]: g for g in param_groups(model, cfg, {"embed"}, {"text.weight", "text.bias"})}
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    assert id(model.proj.weight) in ids["new_decay"]
    assert id(model.embed.weight) in ids["new_no_decay"]  # named in no_weight_decay
    assert {id(model.norm.weight), id(model.proj.bias)} <= ids["new_no_decay"]
    assert id(model.text.weight) in ids["pretrained_decay"] and id(model.text.bias) in ids["pretrained_no_decay"]
    assert groups["pretrained_decay"]["lr"] == pytest.approx(0.1)
    assert groups["new_no_decay"]["weight_decay"] == 0.0 and groups["new_decay"]["weight_decay"] == 0.05
    total = sum(len(g["params"]) for g in groups.values())
    assert total == len(list(model.parameters()))


def test_warmup_cosine_shape():
    f = warmup_cosine(10, 110, 0.01)
    assert f(0) == pytest.approx(0.1)
    assert f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(110) == pytest.approx(0.01) and f(500) == pytest.approx(0.01)
    assert all(f(s) >= f(s + 1) for s in range(10, 120))


def test_build_optimizer_steps():
    model = Toy()
    opt = build_optimizer(model, OptimConfig(lr=0.5, warmup_steps=2), total_steps=10)
    sched = opt["lr_scheduler"]["scheduler"]
    assert opt["optimizer"].param_groups[0]["lr"] == pytest.approx(0.25)  # warmup step 0 -> lr/2
    opt["optimizer"].step(); sched.step()
    assert max(g["lr"] for g in opt["optimizer"].param_groups) == pytest.approx(0.5)


def test_guard_skips_then_stops():
    guard = NonFiniteGuard(max_consecutive=3)
    ok = torch.tensor(1.0)
    bad = torch.tensor(float("nan"))
    assert guard.check(ok, {"vtc_loss": ok})
    assert not guard.check(bad, {"vtc_loss": bad, "mlm_loss": ok})
    assert not guard.check(bad, {"vtc_loss": bad})
    assert guard.check(ok, {"vtc_loss": ok})  # a good step resets the streak
    assert guard.total == 2 and guard.consecutive == 0
    guard.check(bad, {"vtc_loss": bad})
    guard.check(torch.tensor(float("inf")), {"vtc_loss": bad})
    with pytest.raises(NonFiniteLossError, match="3 consecutive.*vtc_loss"):
        guard.check(bad, {"vtc_loss": bad})
    state = guard.state_dict()
    other = NonFiniteGuard(3)
    other.load_state_dict(state)
    assert other.total == guard.total == 5
