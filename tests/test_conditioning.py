import pytest
import torch

from diffuse_edu.models.conditioning import Cond, drop_condition


def _cond(b=6, length=3, d=4):
    g = torch.Generator().manual_seed(0)
    return Cond(labels=torch.arange(b), context=torch.randn(b, length, d, generator=g),
                context_mask=torch.ones(b, length, dtype=torch.bool))


def test_nothing_or_everything_is_dropped_at_p_zero_and_one():
    cond = _cond()
    null = Cond(labels=torch.tensor(10), context=torch.zeros(3, 4),
                context_mask=torch.tensor([True, False, False]))
    kept = drop_condition(cond, null, 0.0)
    assert torch.equal(kept.labels, cond.labels) and torch.equal(kept.context, cond.context)
    gone = drop_condition(cond, null, 1.0)
    assert (gone.labels == 10).all() and (gone.context == 0).all()
    assert gone.context_mask.tolist() == [[True, False, False]] * 6


def test_the_same_examples_lose_every_field():
    cond = _cond(b=200)
    null = Cond(labels=torch.tensor(-1), context=torch.zeros(3, 4),
                context_mask=torch.zeros(3, dtype=torch.bool))
    out = drop_condition(cond, null, 0.5, generator=torch.Generator().manual_seed(1))
    dropped = out.labels == -1
    assert 60 < dropped.sum() < 140
    assert torch.equal((out.context == 0).all(-1).all(-1), dropped)
    assert torch.equal(~out.context_mask.any(-1), dropped)


def test_index_and_a_missing_null_field():
    cond = _cond()
    assert cond.index(torch.tensor([4, 1])).labels.tolist() == [4, 1]
    with pytest.raises(ValueError, match="no context"):
        drop_condition(cond, Cond(labels=torch.tensor(10)), 0.5)
