"""mednets.keras.train: fit under tf.distribute (MirroredStrategy over 2 logical CPUs), resume, outputs."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from mednets.keras.train import fit, is_chief

ROOT = Path(__file__).resolve().parents[1]

MIRRORED = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf

    # Two logical CPU devices: must be set before TensorFlow initialises its devices.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    from mednets.keras.train import fit

    def build():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((6, 6, 6, 2))
        h = keras.layers.Conv3D(4, 3, padding="same", activation="relu")(inputs)  # no batch norm
        model = keras.Model(inputs, keras.layers.Conv3D(1, 1)(h))
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
        return model

    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 6, 6, 6, 2)).astype("float32")
    y = (0.5 * x[..., :1] + 0.1).astype("float32")
    start = [w.tolist() for w in build().get_weights()]
    two = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    one = tf.distribute.OneDeviceStrategy("/cpu:0")
    m2, h2 = fit(build, x, y, epochs=1, batch_size=4, strategy=two, progress=False, shuffle=False)
    m1, h1 = fit(build, x, y, epochs=1, batch_size=4, strategy=one, progress=False, shuffle=False)
    two_w, one_w = [w.tolist() for w in m2.get_weights()], [w.tolist() for w in m1.get_weights()]
    print(json.dumps({"replicas": two.num_replicas_in_sync, "start": start, "two": two_w, "one": one_w,
                      "loss": [h2["loss"][0], h1["loss"][0]]}))
    """
)


def test_mirrored_strategy_on_two_logical_cpus_equals_one_device():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_CONFIG", None)
    run = subprocess.run(
        [sys.executable, "-c", MIRRORED], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2
    for start, two, one in zip(out["start"], out["two"], out["one"]):
        assert not np.allclose(start, one)  # the step changed the weights
        np.testing.assert_allclose(two, one, atol=1e-5, rtol=0)
    assert out["loss"][0] == pytest.approx(out["loss"][1], rel=1e-5)


def _build():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    return model


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    return x, x.sum(1, keepdims=True)


class _Stop(keras.callbacks.Callback):
    """Kill the run when epoch ``at`` (0-based) starts."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at:
            raise KeyboardInterrupt


def test_interrupted_run_resumes_from_backup_and_writes_outputs(tmp_path):
    x, y = _data()
    kw = dict(epochs=3, batch_size=8, validation_data=(x, y), progress=False, shuffle=False)
    full, full_hist = fit(_build, x, y, out_dir=tmp_path / "full", **kw)
    with pytest.raises(KeyboardInterrupt):
        fit(_build, x, y, out_dir=tmp_path / "cut", callbacks=[_Stop(2)], **kw)
    resumed, hist = fit(_build, x, y, out_dir=tmp_path / "cut", **kw)
    for a, b in zip(full.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    assert len(hist["loss"]) == 1  # only the epoch left to do was trained
    rows = [json.loads(r) for r in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[-1]["loss"] == pytest.approx(
        full_hist["loss"][-1]
    )
    for name in ("last.keras", "best.keras"):
        assert (tmp_path / "cut" / "checkpoints" / name).is_file()
    loaded = keras.models.load_model(tmp_path / "cut" / "checkpoints" / "last.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), resumed.predict(x, verbose=0), atol=1e-6)


def test_mixed_precision_policy_is_applied_then_restored():
    x, y = _data()
    model, hist = fit(_build, x, y, epochs=1, batch_size=8, mixed_precision="mixed_bfloat16", progress=False)
    assert model.layers[0].dtype_policy.name == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == "float32"
    assert np.isfinite(hist["loss"][0])


def test_bad_input_and_chief():
    x, y = _data()
    with pytest.raises(ValueError, match="epochs"):
        fit(_build, x, y, epochs=0)
    with pytest.raises(ValueError, match="mixed_precision"):
        fit(_build, x, y, epochs=1, mixed_precision="float8")
    with pytest.raises(ValueError, match="compiled keras.Model"):
        fit(lambda: keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)]), x, y, epochs=1)
    cluster = {"worker": ["a:1", "b:1"]}
    assert is_chief(json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    assert not is_chief(
        json.dumps({"cluster": {**cluster, "chief": ["c:1"]}, "task": {"type": "worker", "index": 0}})
    )
