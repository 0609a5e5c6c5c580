"""The sharded estimators of :mod:`lemmse.distributed`, with real gloo processes.

Each test that needs a process group starts two processes itself (``spawn``, loopback
127.0.0.1, a free port, a 30 s process-group timeout, joined within 60 s); they save what they
computed (or the error they got) under ``tmp_path`` and the test compares it here with the
single-process estimator.  The merge is the streaming log-sum-exp identity of the chapter on
computing at scale (module docstring of :mod:`lemmse.distributed`).
"""

from __future__ import annotations

import datetime
import os
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

pytestmark = pytest.mark.usefixtures("one_thread")

WORLD = 2
N = 7  # odd: shard_range gives 4 + 3
JOIN_S = 60
SIGMA = 0.2


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cases():
    """name -> (estimator class, operator, keywords, y): every estimator and operator kind."""
    import torch.nn.functional as F

    from lemmse import LEMMSE, MMSE, Blur, Denoising, Inpainting, LocalMMSE

    g = torch.Generator().manual_seed(0)
    H = W = 12
    k1 = torch.tensor([1.0, 4.0, 22.0, 4.0, 1.0], dtype=torch.float64) / 32
    mask = (torch.rand(H, W, generator=g) > 0.3).float()
    x = F.avg_pool2d(torch.rand(2, 1, H + 2, W + 2, generator=g), 3, 1)
    e = torch.randn(2, 1, H, W, generator=g)
    specs = {
        "denoising": (LEMMSE, Denoising(), dict(patch_size=5)),
        "inpainting_aware": (LEMMSE, Inpainting(mask), dict(patch_size=5, preinverse="inverse")),
        "inpainting_agnostic": (LEMMSE, Inpainting(mask), dict(patch_size=3)),
        "deblurring_aware": (LEMMSE, Blur(k1[:, None] * k1[None]),
                             dict(patch_size=5, preinverse="inverse")),
        "local": (LocalMMSE, Denoising(), dict(patch_size=3)),
        "mmse": (MMSE, Denoising(), {}),
        "d4_half": (LEMMSE, Denoising(), dict(patch_size=3, group="d4", group_weight=0.5)),
        "denoising_f64": (LEMMSE, Denoising(), dict(patch_size=5, dtype=torch.float64)),
    }
    out = {}
    for name, (cls, op, kw) in specs.items():
        y = op.A(x.double()) + SIGMA * e.double()
        out[name] = (cls, op, kw, y.to(kw.get("dtype", torch.float32)))
    return out


def _train():
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(1)
    return F.avg_pool2d(torch.rand(N, 1, 14, 14, generator=g), 3, 1)


# ---------------------------------------------------------------------------- the workers
def _worker(rank, port, out, scenario):
    """One rank: set up gloo on the loopback, run ``scenario``, save its result or error."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=30))
    result = {}
    try:
        globals()[f"_scenario_{scenario}"](rank, result)
    except BaseException as e:  # recorded for the test, not swallowed silently
        result["error"] = (type(e).__name__, str(e))
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    if scenario != "crash":
        dist.destroy_process_group()


def _scenario_equal(rank, result):
    from lemmse.distributed import Sharded, shard_range

    train = _train()
    splits = {"ranges": shard_range(N, rank, WORLD),  # 4 + 3 images
              "empty": (0, 0) if rank == 0 else (0, N)}  # rank 0 holds nothing
    for name, (cls, op, kw, y) in _cases().items():
        for how, (a, b) in splits.items():
            est = Sharded(cls, train[a:b], op, **kw)
            result[name, how] = (est(y, SIGMA), est.log_density(y, SIGMA), est.offset)
            if "d4" not in name:  # (a symmetric orbit has tied weights: top-k order)
                result[name, how, "posterior"] = vars(est.posterior(y, SIGMA, topk=5))
            if name == "denoising":  # σ = 0.4: n50 > 256 at a third of the pixels
                result[name, how, "posterior_flat"] = vars(est.posterior(y, 0.4, topk=5))
            if name == "denoising":  # the centring each rank's estimator applies: -queries(0)
                zero = torch.zeros(1, *train.shape[1:])
                result[name, how, "centre"] = -est.estimator.problem().queries(zero)[0, :, 0, 0]


def _scenario_errors(rank, result):
    from lemmse import LEMMSE, Denoising
    from lemmse.distributed import Sharded, shard_range

    train = _train()
    a, b = shard_range(N, rank, WORLD)
    est = Sharded(LEMMSE, train[a:b], Denoising(), patch_size=3)
    y = train[:2] + 0.1

    def record(key, fn):
        try:
            fn()
            result[key] = None
        except Exception as e:
            result[key] = (type(e).__name__, str(e))

    if rank == 1:  # a rank failing in the middle of its computation
        est.estimator._x_lse = lambda y, s: (_ for _ in ()).throw(MemoryError("injected"))
    record("fail", lambda: est(y, 0.2))
    if rank == 1:
        del est.estimator._x_lse
    record("bad_sigma", lambda: est(y, -1.0))  # the same bad input on every rank
    record("different_y", lambda: est(y + rank, 0.2))
    record("different_batch", lambda: est(y[:1 + rank], 0.2))
    result["after"] = est(y, 0.2)  # the group is still usable


def _scenario_crash(rank, result):
    from lemmse import LEMMSE, Denoising
    from lemmse.distributed import Sharded, shard_range

    train = _train()
    a, b = shard_range(N, rank, WORLD)
    est = Sharded(LEMMSE, train[a:b], Denoising(), patch_size=3)
    if rank == 1:
        os._exit(3)  # dies without a word, mid-run
    t = time.monotonic()
    try:
        est(train[:2], 0.2)
    finally:
        result["seconds"] = time.monotonic() - t


def _spawn(tmp_path, scenario):
    """Run ``scenario`` on two spawned ranks; ``[result of rank 0, of rank 1]``."""
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, str(tmp_path), scenario))
             for r in range(WORLD)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + JOIN_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert not hung, f"ranks {hung} still running after {JOIN_S} s (a hang)"
    return [torch.load(tmp_path / f"rank{r}.pt") if (tmp_path / f"rank{r}.pt").exists() else None
            for r in range(WORLD)], [p.exitcode for p in procs]


# ---------------------------------------------------------------------------- the tests
@pytest.fixture(scope="module")
def equal_runs(tmp_path_factory):
    results, codes = _spawn(tmp_path_factory.mktemp("equal"), "equal")
    assert codes == [0, 0]
    for r in results:
        assert "error" not in r, r.get("error")
    return results


def _reference(cls, op, kw, y, offset=None):
    est = cls(_train(), op, **kw, **({} if offset is None else {"offset": offset}))
    x = est(y, SIGMA)
    ld = est.log_density(y, SIGMA) if hasattr(est, "log_density") else \
        est.posterior(y, SIGMA).log_density
    return x, ld


@pytest.mark.parametrize("how", ["ranges", "empty"])
@pytest.mark.parametrize("name", list(_cases()))
def test_sharded_equals_single_process(equal_runs, name, how):
    cls, op, kw, y = _cases()[name]
    tol = 1e-12 if kw.get("dtype") == torch.float64 else 1e-6
    x_ref, ld_ref = _reference(cls, op, kw, y)
    x0, ld0, offset = equal_runs[0][name, how]
    for rank in range(WORLD):  # the same result on every rank
        x, ld, _ = equal_runs[rank][name, how]
        assert torch.equal(x, x0) and torch.equal(ld, ld0)
    assert x0.dtype == x_ref.dtype and x0.shape == x_ref.shape
    assert (x0 - x_ref).abs().max() <= tol
    # the log-density (natural log, up to ~ D/2 log(1/2πσ²)), relative to 1 + |value|: as
    # close to the float64 estimator's as the single-process one is (whose float32 lse is
    # rounded after the ‖q‖²/2σ² term: 2.5e-6 for the whitened blur patches), or to tol
    _, ld64 = _reference(cls, op, {**kw, "dtype": torch.float64}, y.double())
    own = ((ld_ref.double() - ld64).abs() / (1.0 + ld64.abs())).max()
    assert ((ld0.double() - ld64).abs() / (1.0 + ld64.abs())).max() <= max(tol, 2 * own)
    # with the same (whole-set) offset as the ranks used, as tight
    x_same, _ = _reference(cls, op, kw, y, offset=offset)
    assert (x0 - x_same).abs().max() <= tol


@pytest.mark.parametrize("how", ["ranges", "empty"])
@pytest.mark.parametrize("name", [n for n in _cases() if "d4" not in n])
def test_sharded_posterior_equals_single_process(equal_runs, name, how):
    cls, op, kw, y = _cases()[name]
    tol = 1e-12 if kw.get("dtype") == torch.float64 else 1e-6
    ref = cls(_train(), op, **kw).posterior(y, SIGMA, topk=5)
    got = equal_runs[0][name, how, "posterior"]
    for field in ("x_hat", "log_density", "n50", "participation", "topk_weights",
                  "topk_image", "topk_position"):
        a, b = got[field], getattr(ref, field)
        assert a.shape == b.shape and a.dtype == b.dtype, field
        assert torch.equal(a, equal_runs[1][name, how, "posterior"][field]), field
    assert (got["x_hat"] - ref.x_hat).abs().max() <= tol
    assert ((got["topk_weights"] - ref.topk_weights).abs()).max() <= tol
    assert ((got["participation"] / ref.participation) - 1).abs().max() <= 10 * tol
    ld, ld_ref = got["log_density"], ref.log_density
    assert ((ld - ld_ref).abs() / (1 + ld_ref.abs())).max() <= 5 * tol
    assert torch.equal(got["topk_image"], ref.topk_image)  # whole-set image ids
    assert torch.equal(got["topk_position"], ref.topk_position)
    small = ref.n50 <= 256  # exact there; -1 (more than 256) elsewhere
    assert torch.equal(got["n50"][small], ref.n50[small]) and (got["n50"][~small] == -1).all()


def test_sharded_n50_beyond_256_is_minus_one(equal_runs):
    cls, op, kw, y = _cases()["denoising"]
    ref = cls(_train(), op, **kw).posterior(y, 0.4, topk=5)
    got = equal_runs[0]["denoising", "ranges", "posterior_flat"]
    small = ref.n50 <= 256
    assert 0 < int((~small).sum()) < small.numel()  # both kinds of pixel occur
    assert torch.equal(got["n50"][small], ref.n50[small]) and (got["n50"][~small] == -1).all()
    assert ((got["participation"] / ref.participation) - 1).abs().max() <= 1e-5


def test_every_rank_centres_on_the_whole_sets_mean(equal_runs):
    """Each shard's own mean would cost up to 3e-7 in float32 (and more on real data)."""
    mean = _train().double().mean(dim=(0, 2, 3)).float()
    for how in ("ranges", "empty"):
        for rank in range(WORLD):
            assert torch.allclose(equal_runs[rank]["denoising", how, "centre"], mean,
                                  rtol=0, atol=1e-7)


def test_shard_sizes_are_odd_and_empty():
    from lemmse.distributed import shard_range

    assert [shard_range(N, r, WORLD) for r in range(WORLD)] == [(0, 4), (4, 7)]
    assert [shard_range(1, r, 3) for r in range(3)] == [(0, 1), (1, 1), (1, 1)]
    for n in range(9):
        for world in range(1, 5):
            ranges = [shard_range(n, r, world) for r in range(world)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
            assert max(b - a for a, b in ranges) - min(b - a for a, b in ranges) <= 1
    with pytest.raises(ValueError, match="rank must be < world"):
        shard_range(5, 2, 2)
    with pytest.raises(ValueError, match="world must be an integer >= 1"):
        shard_range(5, 0, 0)


def test_a_failing_rank_raises_on_every_rank(tmp_path):
    t = time.monotonic()
    results, codes = _spawn(tmp_path, "errors")
    assert time.monotonic() - t < JOIN_S and codes == [0, 0]
    for rank, r in enumerate(results):
        assert "error" not in r, r.get("error")
        kind, msg = r["fail"]  # rank 1 failed; both ranks say so, naming it
        assert kind == "ShardError"
        assert "failed on 1 of 2 ranks" in msg and "rank 1: MemoryError: injected" in msg
        kind, msg = r["bad_sigma"]  # the same bad input everywhere: each rank's own error
        assert kind == "ValueError" and "sigma must be positive" in msg
        kind, msg = r["different_y"]
        assert kind == "ShardError" and "must be equal on every rank" in msg
        kind, msg = r["different_batch"]
        assert kind == "ValueError" and "batch sizes [1, 2]" in msg
    assert torch.equal(results[0]["after"], results[1]["after"])


def test_a_dead_rank_is_an_error_not_a_hang(tmp_path):
    results, codes = _spawn(tmp_path, "crash")
    assert codes[1] == 3 and results[1] is None
    kind, _ = results[0]["error"]  # gloo reports the lost peer (or the 30 s timeout)
    assert kind in ("RuntimeError", "DistBackendError", "ShardError")
    assert results[0]["seconds"] < 35


def test_without_a_process_group_it_says_how_to_start_one():
    from lemmse import LEMMSE
    from lemmse.distributed import Sharded

    with pytest.raises(RuntimeError, match="init_process_group"):
        Sharded(LEMMSE, _train(), patch_size=3)


def test_offset_keyword_of_the_estimators():
    from lemmse import LEMMSE

    train = _train()
    y = train[:1] + 0.05
    plain = LEMMSE(train, patch_size=3)
    same = LEMMSE(train, patch_size=3, offset=train.double().mean(dim=(0, 2, 3)))
    moved = LEMMSE(train, patch_size=3, offset=[0.0])  # distances do not depend on it
    assert (same(y, 0.2) - plain(y, 0.2)).abs().max() <= 1e-6
    assert (moved(y, 0.2) - plain(y, 0.2)).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="offset must be 1 finite numbers"):
        LEMMSE(train, patch_size=3, offset=[0.0, 1.0])
    with pytest.raises(ValueError, match="offset must be 1 finite numbers"):
        LEMMSE(train, patch_size=3, offset=[float("nan")])


# ---------------------------------------------------------------------------- the command line
def test_shard_command_under_torchrun_equals_single_process(real_data_root, tmp_path):
    import subprocess
    import sys

    from lemmse import LEMMSE, load_dataset
    from lemmse.tasks import make_operator

    out = tmp_path / "out.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(WORLD),
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           "-m", "lemmse", "shard", "--dataset", "fashion-mnist", "--n-train", "51",
           "--n-images", "2", "--sigma", "0.1", "0.3", "--task", "inpainting-random",
           "--physics", "aware", "--patch-size", "3", "--timeout", "30",
           "--data-root", str(real_data_root), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=JOIN_S, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "51 training images over 2 processes" in run.stdout
    got = torch.load(out)
    assert got["config"]["world"] == WORLD and got["x_hat"].shape == (2, 2, 1, 28, 28)
    train = load_dataset("fashion-mnist", "train", n=51, root=real_data_root)
    est = LEMMSE(train, make_operator("inpainting-random", (1, 28, 28)), patch_size=3,
                 preinverse="inverse")
    for k, sigma in enumerate((0.1, 0.3)):
        assert (got["x_hat"][k] - est(got["y"][k], sigma)).abs().max() <= 1e-6


def test_shard_command_reports_bad_options(real_data_root, tmp_path, capsys):
    from lemmse.cli import main

    out = tmp_path / "out.pt"
    code = main(["shard", "--dataset", "fashion-mnist", "--n-train", "5", "--n-images", "0",
                 "--data-root", str(real_data_root), "--out", str(out)])
    assert code == 1 and "n_images must be a positive integer" in capsys.readouterr().err
    assert not out.exists()


def test_a_world_of_one_without_torchrun():
    """``process_group`` outside torchrun: one process; the merge of one shard is the identity."""
    from lemmse import LEMMSE, EquivariantMMSE, SuperResolution
    from lemmse.distributed import Sharded, process_group

    train = _train()
    y = train[:2] + 0.05
    assert "RANK" not in os.environ
    with process_group("cpu", timeout=30) as (rank, world):
        assert (rank, world) == (0, 1)
        est = Sharded(LEMMSE, train, patch_size=3)
        assert (est.N, est.start, est.stop) == (N, 0, N)
        alone = LEMMSE(train, patch_size=3, offset=est.offset)
        assert torch.equal(est(y, SIGMA), alone(y, SIGMA))  # bit for bit
        with pytest.raises(TypeError, match="estimator_cls must be LEMMSE, LocalMMSE or MMSE"):
            Sharded(EquivariantMMSE, train)
        with pytest.raises(TypeError, match="super-resolution"):
            Sharded(LEMMSE, train, SuperResolution(2), patch_size=3)
        with pytest.raises(ValueError, match="offset is set by Sharded"):
            Sharded(LEMMSE, train, patch_size=3, offset=[0.5])
        with pytest.raises(ValueError, match="every training shard is empty"):
            Sharded(LEMMSE, train[:0], patch_size=3)
        with pytest.raises(ValueError, match="patch_size must be odd"):
            Sharded(LEMMSE, train, patch_size=4)
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        with process_group("cpu", timeout=0):
            pass
