"""Tests of mednets.keras.core: the input-shape check, InputCheck, norm layers, encoder features."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mednets.keras import core, count_params
from mednets.keras.core import (
    EncoderFeatures,
    InputCheck,
    check_input_shape,
    conv_norm_act,
    model_cost,
    norm_layer,
)


def test_count_params_is_one_function():
    assert count_params is core.count_params


def test_check_input_shape_per_axis_stride_channels_and_static_sizes():
    assert check_input_shape((None, 64, 4), 32) == 2
    assert check_input_shape((8, 64, 64, 1), (8, 32, 32)) == 3
    with pytest.raises(ValueError, match=r"axis 0: 12 \(nearest valid: 8 or 16\).*\(8, 32, 32\)"):
        check_input_shape((12, 64, 64, 1), (8, 32, 32), name="net")
    with pytest.raises(ValueError, match=r"net expects 4 input channels.*\(32, 32, 3\)"):
        check_input_shape((32, 32, 3), 4, name="net", channels=4)
    with pytest.raises(ValueError, match="positive channel count"):
        check_input_shape((32, 32, None), 4)
    with pytest.raises(ValueError, match="needs known spatial sizes"):
        check_input_shape((None, 32, 1), 4, need_static=True)
    with pytest.raises(ValueError, match="rank 2"):
        check_input_shape((32, 1), 4)


def _checked_model(stride=4, channels=1):
    inputs = keras.Input((None, None, channels))
    x = InputCheck(stride, channels, "tiny", name="check")(inputs)
    return keras.Model(inputs, keras.layers.Conv2D(1, 3, padding="same", name="conv")(x))


def test_input_check_eager_and_predict():
    model = _checked_model()
    assert model(np.zeros((2, 8, 12, 1), "float32")).shape == (2, 8, 12, 1)
    with pytest.raises(
        ValueError, match=r"tiny input spatial shape \(6, 12\).*axis 0: 6 \(nearest valid: 4 or 8\)"
    ):
        model(np.zeros((1, 6, 12, 1), "float32"))
    with pytest.raises(ValueError, match=r"axis 1: 2 \(nearest valid: 4\)"):
        model.predict(np.zeros((3, 8, 2, 1), "float32"), verbose=0)
    assert count_params(model) == 9 + 1  # the check has no weights


def test_input_check_in_a_compiled_fit_with_unknown_sizes():
    """A tf.data pipeline of unknown spatial sizes: the check becomes a graph assertion."""
    model = _checked_model()
    model.compile(optimizer="sgd", loss="mse")

    def batches(size):
        def gen():
            yield np.zeros((1, size, 8, 1), "float32"), np.zeros((1, size, 8, 1), "float32")

        spec = tf.TensorSpec((None, None, None, 1), tf.float32)
        return tf.data.Dataset.from_generator(gen, output_signature=(spec, spec))

    model.fit(batches(8), epochs=1, verbose=0)
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"tiny: every input spatial size.*\(4, 4\).*\[6 8\]"
    ):
        model.fit(batches(6), epochs=1, verbose=0)


def test_model_cost_ignores_the_input_check():
    inputs = keras.Input((8, 8, 1))
    x = InputCheck(2, 1, name="check")(inputs)
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3, padding="same")(x))
    assert model_cost(model) == {"params": 20, "macs": 8 * 8 * 9 * 2, "activation_bytes": 8 * 8 * 2 * 4}


def test_input_check_round_trips_through_config():
    layer = InputCheck((2, 4), 3, "net")
    clone = InputCheck.from_config(layer.get_config())
    assert (clone.stride, clone.channels, clone.model_name) == ((2, 4), 3, "net")


def test_norm_layer_is_built_with_its_momentum_and_epsilon():
    bn = norm_layer("batch", momentum=0.9, epsilon=1e-5)
    assert (bn.momentum, bn.epsilon) == (0.9, 1e-5)
    assert norm_layer("group", groups=4, epsilon=1e-5).epsilon == 1e-5
    assert norm_layer("instance").groups == -1
    assert norm_layer(None) is None
    with pytest.raises(ValueError, match="norm must be one of"):
        norm_layer("none")
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\), got 1.0"):
        norm_layer("batch", momentum=1.0)
    inputs = keras.Input((4, 4, 2))
    x = conv_norm_act(inputs, 8, norm="group", bn_momentum=0.9, bn_epsilon=1e-5, name="g")
    y = conv_norm_act(inputs, 8, norm="batch", bn_momentum=0.9, bn_epsilon=1e-5, name="b")
    model = keras.Model(inputs, [x, y])
    assert model.get_layer("g_norm").epsilon == 1e-3  # bn_* apply to batch norm only
    assert (model.get_layer("b_norm").momentum, model.get_layer("b_norm").epsilon) == (0.9, 1e-5)


def test_encoder_features_state_channels_and_need_one_reduction_each():
    x = keras.Input((16, 16, 3))
    y = keras.layers.Conv2D(5, 2, strides=2)(x)
    feats = EncoderFeatures([x, y], (1, 2))
    assert feats.channels == (3, 5) and feats.reductions == (1, 2) and feats[1] is y
    with pytest.raises(ValueError, match="one reduction per feature: 2 features, 1 reductions"):
        EncoderFeatures([x, y], (1,))
