"""Several processes on a CPU: torchrun with gloo, DistributedDataParallel through mednets.torch.train.fit."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mednets.torch.train import fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]

COMMON = textwrap.dedent(
    """
    import torch

    def make_net():
        torch.manual_seed(0)
        # GroupNorm normalises each sample alone, so splitting the batch changes nothing.
        return torch.nn.Sequential(
            torch.nn.Conv3d(2, 4, 3, padding=1), torch.nn.GroupNorm(2, 4), torch.nn.ReLU(),
            torch.nn.Conv3d(4, 1, 1),
        )

    def make_data():
        g = torch.Generator().manual_seed(1)
        x = torch.randn(4, 2, 6, 6, 6, generator=g)
        return torch.utils.data.TensorDataset(x, x[:, :1] * 0.5 + 0.1)
    """
)

WORKER = COMMON + textwrap.dedent(
    """
    import sys
    from pathlib import Path

    torch.set_num_threads(1)
    from mednets.torch.distributed import cleanup, rank, world_size
    from mednets.torch.train import fit

    out = Path(sys.argv[1])
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    # Every rank is given its own out_dir: only rank 0's may appear.
    fit(net, make_data(), torch.nn.functional.mse_loss, opt, epochs=1, batch_size=4, shuffle=False,
        progress=False, out_dir=out / f"rank{rank()}")
    if rank() == 0:
        torch.save({k: v for k, v in net.state_dict().items()}, out / "ddp.pt")
        (out / "world.txt").write_text(str(world_size()))
    cleanup()
    """
)


def _namespace():
    ns = {}
    exec(COMMON, ns)
    return ns


def test_ddp_two_processes_equal_one_process_and_only_rank0_writes(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
        str(tmp_path),
    ]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "world.txt").read_text() == "2"

    ns = _namespace()
    net = ns["make_net"]()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    hist = fit(
        net,
        ns["make_data"](),
        torch.nn.functional.mse_loss,
        opt,
        epochs=1,
        batch_size=4,
        shuffle=False,
        progress=False,
    )
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    start = ns["make_net"]().state_dict()
    for name, value in net.state_dict().items():
        assert not torch.allclose(value, start[name])  # the step moved every parameter
        torch.testing.assert_close(ddp[name], value, atol=1e-5, rtol=0)
    # Only rank 0 wrote, and its logged loss is the mean over both processes' samples.
    assert (tmp_path / "rank0" / "checkpoints" / "last.pt").is_file()
    assert not (tmp_path / "rank1").exists()
    row = json.loads((tmp_path / "rank0" / "metrics.jsonl").read_text())
    assert row["loss"] == pytest.approx(hist["loss"][0], rel=1e-5)
