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
