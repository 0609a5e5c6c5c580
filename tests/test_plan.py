"""The one choice of path and back-end, ``lemmse.backends.plan`` (chapter 7): what a call of a
patch estimator takes, and the reason it gives (``est.plan()``, ``est.last_plan``)."""

from __future__ import annotations

import pytest
import torch

import lemmse
from lemmse import _native
from lemmse.backends import Plan, plan
from lemmse.operators import Blur

slide = _native.load_slide_kernel() is not None
native = _native.load_kernel() is not None


def train(C=1, H=8, N=6):
    return torch.rand(N, C, H, H, generator=torch.Generator().manual_seed(0))


def test_torch_and_float64_say_why():
    p = lemmse.LEMMSE(train(), patch_size=3, backend="torch").plan()
    assert (p.path, p.backend, p.pack) == ("attention", "torch", False)
    assert "backend='torch'" in p.reason
    p = lemmse.LEMMSE(train().double(), patch_size=3).plan()
    assert p.backend == "torch" and "float64" in p.reason


def test_posterior_plan_is_torch_attention():
    p = lemmse.LocalMMSE(train(), patch_size=3).plan(track=True)
    assert (p.path, p.backend) == ("attention", "torch") and "posterior" in p.reason


@pytest.mark.skipif(not slide, reason="no sliding-window kernel here")
def test_call_records_its_plan():
    est = lemmse.LEMMSE(train(), patch_size=3)
    assert est.last_plan is None
    x = torch.rand(1, 1, 8, 8)
    est(x, 0.2)
    assert est.last_plan == est.plan() and est.last_plan.path == "slide"
    assert est._last_path == "slide"  # the old name
    est = lemmse.LEMMSE(train(), patch_size=3, algorithm="attention")
    est(x, 0.2)
    assert est.last_plan.path == "attention" and "algorithm='attention'" in est.last_plan.reason


@pytest.mark.skipif(not native, reason="no native attention kernel here")
def test_whitened_blur_packs_keys_when_blocks_fit():
    blur = Blur(torch.ones(3, 3) / 9)
    p = lemmse.LEMMSE(train(H=8), blur, patch_size=3, preinverse="inverse").plan()
    assert (p.path, p.backend, p.pack) == ("attention", "native", True)
    assert "whitened" in p.reason and "blocks of 16" in p.reason
    p = lemmse.LEMMSE(train(H=6), blur, patch_size=3, preinverse="inverse").plan()
    assert p.pack is False  # 36 positions: blocks of 16 would straddle two images


def test_sliding_where_it_does_not_apply_raises():
    est = lemmse.LEMMSE(train(C=5), patch_size=3, algorithm="sliding")
    with pytest.raises(ValueError, match="5 channels"):
        est.plan()
    with pytest.raises(ValueError, match="algorithm"):
        plan(est.problem(), algorithm="fast")
    assert isinstance(lemmse.LEMMSE(train(C=5), patch_size=3).plan(), Plan)


def test_engine_is_the_attention_module(monkeypatch):
    """``lemmse.engine`` (chapter 7's name) is lemmse.backends.attention itself: its names
    import, and setting ``engine.DIRECT_SIGMA`` changes what the attention does."""
    import lemmse.backends.attention as attention
    from lemmse.engine import DEFAULT_MEMORY_BUDGET, KeyChunk, StreamingAttention  # noqa: F401

    assert lemmse.engine is attention and lemmse.engine.choose_backend is not None
    q, s = torch.rand(4, 9), torch.full((4,), 0.2)
    monkeypatch.setattr(lemmse.engine, "DIRECT_SIGMA", 1.0)
    assert StreamingAttention(q, s, value_dim=1, memory_budget=1 << 20).direct
    monkeypatch.setattr(lemmse.engine, "DIRECT_SIGMA", 0.0)
    assert not StreamingAttention(q, s, value_dim=1, memory_budget=1 << 20).direct


def test_memory_budget_below_one_image_warns_and_still_computes():
    """A budget that cannot hold one training image's working memory is named, with the fix
    (issue 18: memory_budget=4096 ran for minutes without a word); the result is unchanged."""
    import warnings

    from lemmse import LEMMSE

    g = torch.Generator().manual_seed(0)
    train = torch.rand(6, 1, 16, 16, generator=g)
    y = torch.rand(1, 1, 16, 16, generator=g)
    with pytest.warns(RuntimeWarning, match=r"memory_budget=4096 bytes .*raise memory_budget"):
        small = LEMMSE(train, patch_size=3, memory_budget=4096)(y, 0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default budget: no warning
        full = LEMMSE(train, patch_size=3)(y, 0.2)
    assert torch.allclose(small, full, atol=1e-6)


def test_posterior_progress_bar(capsys):
    """``posterior(progress=True)`` shows a bar over the chunks (issue 18: a posterior ran for
    half a minute without a word); ``progress=False`` shows none; a non-bool is refused."""
    from lemmse import LEMMSE

    g = torch.Generator().manual_seed(1)
    train = torch.rand(40, 1, 16, 16, generator=g)
    y = torch.rand(1, 1, 16, 16, generator=g)
    est = LEMMSE(train, patch_size=3, memory_budget=1 << 18)  # several chunks
    quiet = est.posterior(y, 0.2, topk=2, progress=False)
    assert "posterior" not in capsys.readouterr().err
    loud = est.posterior(y, 0.2, topk=2, progress=True)
    err = capsys.readouterr().err
    assert "LEMMSE.posterior" in err and "chunk" in err
    assert torch.equal(quiet.x_hat, loud.x_hat)
    with pytest.raises(TypeError, match="progress"):
        est.posterior(y, 0.2, progress="yes")
