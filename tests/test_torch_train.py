"""Tests for mednets.torch.train: the generic loop and the poly learning-rate schedule."""

import itertools

import pytest
import torch

from mednets.torch.train import fit, poly_lr, train_step

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _toy_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 5, generator=g)
    w = torch.randn(5, 1, generator=g)
    y = x @ w + 0.5
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    return batches


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_fit_learns_a_linear_map(bf16):
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 1)
    batches = _toy_problem()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    hist = fit(model, batches, torch.nn.functional.mse_loss, opt, epochs=30, bf16=bf16, progress=False)
    assert len(hist["loss"]) == 30
    assert hist["loss"][-1] < 0.1 * hist["loss"][0]
    assert not model.training


def test_fit_logs_parts_and_eval_and_lr():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 1)
    batches = _toy_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def loss_fn(out, y):
        mse = torch.nn.functional.mse_loss(out, y)
        l1 = (out - y).abs().mean()
        return mse + l1, {"mse": mse, "l1": float(l1.detach())}

    calls = []

    def eval_fn(m):
        calls.append(m.training)
        return {"val": 1.0 + len(calls)}

    hist = fit(
        model, batches, loss_fn, opt, epochs=4, scheduler=poly_lr(opt, 4), eval_fn=eval_fn, progress=False
    )
    assert set(hist) == {"loss", "mse", "l1", "val", "lr"}
    assert all(len(v) == 4 for v in hist.values())
    # The total is the sum of its parts, epoch by epoch.
    for tot, a, b in zip(hist["loss"], hist["mse"], hist["l1"]):
        assert tot == pytest.approx(a + b, rel=1e-5)
    assert hist["val"] == [2.0, 3.0, 4.0, 5.0]
    assert calls == [False] * 4  # eval_fn runs in eval mode
    assert hist["lr"] == pytest.approx([0.1 * (1 - e / 4) ** 0.9 for e in range(4)])


def test_fit_accepts_a_dataloader():
    batches = _toy_problem()
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    model = torch.nn.Linear(5, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    hist = fit(model, loader, torch.nn.functional.mse_loss, opt, epochs=10, progress=False)
    assert hist["loss"][-1] < hist["loss"][0]


@pytest.mark.parametrize(
    "epochs,power",
    list(itertools.product([1, 5, 300], [0.9, 1.0])),
    ids=[f"N{e}-p{p}" for e, p in itertools.product([1, 5, 300], [0.9, 1.0])],
)
def test_poly_lr_values(epochs, power):
    param = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([param], lr=1e-4)
    sched = poly_lr(opt, epochs, power=power)
    seen = []
    for _ in range(epochs + 2):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [1e-4 * max(0.0, 1 - e / epochs) ** power for e in range(epochs + 2)]
    assert seen == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert seen[0] == pytest.approx(1e-4)
    assert seen[epochs] == 0.0


def test_poly_lr_midpoint_is_paper_formula():
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1e-4)
    sched = poly_lr(opt, 300)
    for _ in range(150):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4 * 0.5**0.9)


def test_train_step_lowers_loss_on_fixed_batch():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 1)
    x, y = _toy_problem()[0]
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with torch.no_grad():
        before = float(torch.nn.functional.mse_loss(model(x), y))
    loss, parts = train_step(model, x, y, torch.nn.functional.mse_loss, opt)
    with torch.no_grad():
        after = float(torch.nn.functional.mse_loss(model(x), y))
    assert loss == pytest.approx(before)
    assert parts == {}
    assert after < before


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(epochs=0), "epochs"),
        (dict(epochs=2, batches=[]), "at least one"),
        (dict(epochs=2, batches=iter([(torch.ones(1, 5), torch.ones(1, 1))])), "one-shot"),
    ],
    ids=["zero-epochs", "empty", "generator"],
)
def test_fit_bad_input(kwargs, match):
    model = torch.nn.Linear(5, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = kwargs.pop("batches", _toy_problem())
    with pytest.raises(ValueError, match=match):
        fit(model, batches, torch.nn.functional.mse_loss, opt, progress=False, **kwargs)


def test_bad_loss_and_schedule_raise():
    model = torch.nn.Linear(5, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = _toy_problem()
    with pytest.raises(ValueError, match="scalar"):
        fit(model, batches, lambda o, y: (o - y) ** 2, opt, epochs=1, progress=False)
    with pytest.raises(ValueError, match="finite"):
        fit(model, batches, lambda o, y: (o - y).sum() * float("nan"), opt, epochs=1, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        poly_lr(opt, 0)
    with pytest.raises(ValueError, match="power"):
        poly_lr(opt, 3, power=-1)


# -- Checkpoints, exact resume, accumulation, validation --------------------------------------

import json  # noqa: E402
import math  # noqa: E402
from functools import partial  # noqa: E402

import numpy as np  # noqa: E402

from mednets.torch.train import (  # noqa: E402
    label_scores,
    load_checkpoint,
    region_scores,
    save_checkpoint,
    sliding_window_validation,
)


class _Net(torch.nn.Module):
    """Conv + GroupNorm + dropout: the RNG matters (dropout) and the batch split does not."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(2, 4, 3, padding=1)
        self.norm = torch.nn.GroupNorm(2, 4)
        self.drop = torch.nn.Dropout3d(0.3)
        self.head = torch.nn.Conv3d(4, 1, 1)

    def forward(self, x):
        return self.head(self.drop(torch.relu(self.norm(self.conv(x)))))


def _dataset(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 6, 6, 6, generator=g)
    y = (x[:, :1] > 0).float()
    return torch.utils.data.TensorDataset(x, y)


def _run(tmp_path, epochs, resume=None, interrupt_at=None, seed=0, config=None):
    torch.manual_seed(seed)
    net = _Net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    sched = poly_lr(opt, 2)
    calls = []

    def eval_fn(model):
        calls.append(1)
        if interrupt_at is not None and len(calls) == interrupt_at:
            raise KeyboardInterrupt  # the run is killed during epoch `interrupt_at`'s evaluation
        return {"val_score": float(sum(p.sum() for p in model.parameters()))}

    loss = torch.nn.functional.binary_cross_entropy_with_logits
    hist = fit(
        net,
        _dataset(),
        loss,
        opt,
        epochs,
        scheduler=sched,
        eval_fn=eval_fn,
        progress=False,
        batch_size=2,
        out_dir=tmp_path,
        resume=resume,
        config=config or {"lr": 1e-2},
        monitor="val_score",
        mode="min",
    )
    return net, hist


def test_exact_resume_equals_uninterrupted(tmp_path):
    full, full_hist = _run(tmp_path / "full", epochs=2)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", epochs=2, interrupt_at=2)  # killed after epoch 1 was checkpointed
    state = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1
    # A different initialisation: everything must come from the checkpoint.
    resumed, hist = _run(tmp_path / "cut", epochs=2, resume=True, seed=123)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert hist["loss"] == full_hist["loss"] and hist["lr"] == full_hist["lr"]
    rows = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert (tmp_path / "cut" / "checkpoints" / "best.pt").is_file()


def test_resume_from_another_config_is_refused_naming_the_keys(tmp_path):
    _run(tmp_path, epochs=1)
    with pytest.raises(ValueError, match=r"differing keys: lr \(checkpoint 0.01, now 0.1\)"):
        _run(tmp_path, epochs=2, resume=True, config={"lr": 0.1})


def test_checkpoint_that_loads_nothing_or_does_not_fit_raises(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", torch.nn.Linear(3, 1))
    with pytest.raises(ValueError, match="loads nothing"):
        load_checkpoint(path, torch.nn.Sequential(torch.nn.Linear(3, 1)))  # "0.weight", not "weight"
    with pytest.raises(ValueError, match=r"shape mismatches \['weight: checkpoint \(1, 3\), model \(2, 3\)"):
        load_checkpoint(path, torch.nn.Linear(3, 2))
    (tmp_path / "x.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "x.pt", torch.nn.Linear(3, 1))
    torch.save({"weights": 1}, tmp_path / "y.pt")
    with pytest.raises(ValueError, match="not a mednets checkpoint"):
        load_checkpoint(tmp_path / "y.pt")


def test_checkpoint_round_trip_restores_optimiser_and_rng(tmp_path):
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    train_step(net, torch.ones(2, 3), torch.zeros(2, 1), torch.nn.functional.mse_loss, opt)
    torch.manual_seed(5)
    np.random.seed(5)
    path = save_checkpoint(tmp_path / "c.pt", net, opt, epoch=4, config={"a": (1, 2)})
    expected = (torch.rand(3), np.random.rand(2))
    other = torch.nn.Linear(3, 1)
    opt2 = torch.optim.Adam(other.parameters(), lr=0.1)
    state = load_checkpoint(path, other, opt2, config={"a": [1, 2]}, restore_rng=True)
    assert state["epoch"] == 4
    torch.testing.assert_close(other.weight, net.weight)
    assert opt2.state_dict()["state"][0]["step"] == 1
    torch.testing.assert_close(torch.rand(3), expected[0])
    np.testing.assert_array_equal(np.random.rand(2), expected[1])


def test_gradient_accumulation_equals_one_big_batch():
    x, y = torch.randn(4, 5), torch.randn(4, 1)
    torch.manual_seed(0)
    a = torch.nn.Linear(5, 1)
    b = torch.nn.Linear(5, 1)
    b.load_state_dict(a.state_dict())
    mse = torch.nn.functional.mse_loss
    fit(a, [(x, y)], mse, torch.optim.SGD(a.parameters(), lr=0.1), epochs=1, progress=False)
    fit(
        b,
        [(x[:2], y[:2]), (x[2:], y[2:])],
        mse,
        torch.optim.SGD(b.parameters(), lr=0.1),
        epochs=1,
        progress=False,
        accumulate=2,
    )
    torch.testing.assert_close(a.weight, b.weight, atol=1e-6, rtol=0)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_fit_with_amp_learns(amp):
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    hist = fit(model, _toy_problem(), torch.nn.functional.mse_loss, opt, epochs=20, amp=amp, progress=False)
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]


def test_eval_every_fills_other_epochs_with_nan_and_dataset_needs_batch_size():
    model = torch.nn.Linear(5, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    hist = fit(
        model,
        _toy_problem(),
        torch.nn.functional.mse_loss,
        opt,
        epochs=5,
        eval_every=2,
        eval_fn=lambda m: {"val": 1.0},
        progress=False,
    )
    assert [math.isnan(v) for v in hist["val"]] == [True, False, True, False, False]
    with pytest.raises(ValueError, match="batch_size"):
        fit(model, _dataset(), torch.nn.functional.mse_loss, opt, epochs=1, progress=False)
    with pytest.raises(ValueError, match="amp"):
        fit(model, _toy_problem(), torch.nn.functional.mse_loss, opt, epochs=1, amp="fp8", progress=False)


def test_sliding_window_validation_scores_regions_and_labels():
    from mednets.data.brats import brats_regions

    y = np.zeros((12, 10, 8), np.int64)
    y[2:9, 2:8, 2:6] = 2
    y[3:7, 3:7, 3:5] = 1
    y[4:6, 4:6, 3:5] = 3
    regions = brats_regions(y, "brats2023").astype(np.float32)

    class Oracle(torch.nn.Module):  # returns the input's channels: a perfect segmentation
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, x):
            return x * self.w

    ev = sliding_window_validation([(regions, y, (1.0, 1.0, 2.0))], (8, 8, 8), region_scores)
    scores = ev(Oracle())
    assert scores["val_dice"] == 1.0 and scores["val_ET_dice"] == 1.0 and scores["val_TC_hd95"] == 0.0
    hippo = np.where(y == 3, 1, np.where(y > 0, 2, 0))
    masks = np.stack([hippo == 1, hippo == 2]).astype(np.float32)
    ev = sliding_window_validation([(masks, hippo, None)], (8, 8, 8), partial(label_scores, names=("a", "p")))
    assert ev(Oracle())["val_p_dice"] == 1.0
    empty = sliding_window_validation(
        [(np.zeros_like(masks), hippo, None)], (8, 8, 8), partial(label_scores, names=("a", "p"))
    )
    s = empty(Oracle())
    # A missed structure: Dice 0, and HD95 counts as the volume's diagonal (not inf).
    assert s["val_a_dice"] == 0.0 and s["val_a_hd95"] == pytest.approx(np.linalg.norm((12, 10, 8)))
    with pytest.raises(ValueError, match="at least one"):
        sliding_window_validation([], (8, 8, 8), region_scores)


# -- mednets.torch.memory: the meter and the meta-device estimate ---------------------------


def test_meta_device_estimate_equals_the_cpu_measurement():
    from mednets.torch.memory import PeakMemory, estimate_step_memory, param_bytes, step_memory

    def build(size):
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Conv3d(2, 8, 3, padding=1),
            torch.nn.GroupNorm(2, 8),
            torch.nn.ReLU(),
            torch.nn.Flatten(),
            torch.nn.Linear(8 * size[0] * size[1] * size[2], 3),
        )

    net = build((8, 6, 4)).train()
    measured = step_memory(net, torch.randn(2, 2, 8, 6, 4))
    est = estimate_step_memory(build, 2, (8, 6, 4), batch_size=2)
    # Counted without data on the meta device, the step allocates what it does on the CPU
    # (up to a few scalars: the CPU kernels create some 0-d temporaries of their own).
    assert est["step_peak_bytes"] == pytest.approx(measured["peak_bytes"], abs=64)
    assert est["param_bytes"] == param_bytes(net)
    assert est["total_bytes"] == est["step_peak_bytes"] + 3 * param_bytes(net)
    # The peak includes the weight gradients and one activation of 2 x 8 x 8 x 6 x 4 float32 values.
    assert measured["peak_bytes"] >= param_bytes(net) + 2 * 8 * 8 * 6 * 4 * 4
    with PeakMemory() as meter:
        a = torch.zeros(1000)
        b = a.view(10, 100)  # a view: no new allocation
    assert meter.peak == 4000 and b.shape == (10, 100)
