"""The vocabulary of book/conventions.md, read off every public signature of the package.

One name per idea: ``out_channels`` for segmentation outputs and ``num_classes`` for
classifiers, ``stage_blocks`` for blocks per stage, one ``norm``, one
``final_activation``, ``depth`` only for a number of levels, ``input_shape`` only in
Keras (with channels), ``spatial_size`` for a spatial shape without channels.
"""

import importlib
import inspect
import pkgutil

import pytest

import mednets

#: Names that the vocabulary replaced, with the name to use instead.
RETIRED = {
    "classifier_activation": "final_activation",
    "activation": "final_activation",
    "sigmoid": "final_activation",
    "use_batchnorm": "norm",
    "repetitions": "stage_blocks",
    "block_layers": "stage_blocks",
    "blocks": "stage_blocks",
    "n_classes": "num_classes / out_channels",
    "nb_classes": "num_classes / out_channels",
    "in_chns": "in_channels",
    "inplanes": "in_channels",
    "n_dims": "spatial_dims",
    "ndim": "spatial_dims",
}

#: The builder modules whose public callables are checked.
MODULES = [
    "mednets.keras.blocks",
    "mednets.keras.classifiers3d",
    "mednets.keras.core",
    "mednets.keras.resnet34_unet",
    "mednets.keras.unet",
    "mednets.keras.unet3plus",
    "mednets.torch.core",
    "mednets.torch.nvnet",
    "mednets.torch.resnet3d",
    "mednets.torch.inflate",
    "mednets.torch.inference",
]

#: Segmentation builders and classifiers (their output argument differs on purpose).
SEGMENTATION = {
    "mednets.keras.unet.unet",
    "mednets.keras.unet3plus.unet3plus",
    "mednets.keras.unet3plus.unet3plus_resnet34",
    "mednets.keras.resnet34_unet.resnet_unet",
    "mednets.keras.resnet34_unet.resnet34_unet",
    "mednets.torch.nvnet.NVNet",
}
CLASSIFIERS = {
    "mednets.keras.classifiers3d.resnet",
    "mednets.keras.classifiers3d.densenet",
    "mednets.keras.classifiers3d.inception_resnet",
    "mednets.keras.resnet34_unet.resnet34_classifier",
    "mednets.torch.resnet3d.ResNet3d",
}


def _public_callables():
    found = {}
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if callable(obj) and not name.isupper():
                target = obj.__init__ if inspect.isclass(obj) else obj
                try:
                    found[f"{module_name}.{name}"] = inspect.signature(target)
                except (TypeError, ValueError):
                    continue
    return found


@pytest.fixture(scope="module")
def signatures():
    return _public_callables()


def test_the_checked_modules_are_every_builder_module():
    """A new network module must be added to MODULES, or its names go unchecked."""
    framework = [
        info.name
        for info in pkgutil.walk_packages(mednets.__path__, "mednets.")
        if info.name.startswith(("mednets.keras.", "mednets.torch."))
    ]
    not_networks = {
        "mednets.keras.data",
        "mednets.keras.losses",
        "mednets.keras.train",
        "mednets.torch.data",
        "mednets.torch.losses",
        "mednets.torch.train",
        "mednets.torch.distributed",
        "mednets.torch.memory",
        "mednets.torch.blocks",
    }
    assert sorted(set(framework) - not_networks - set(MODULES)) == []


def test_no_retired_argument_names(signatures):
    bad = [
        f"{where}({name}) -> use {RETIRED[name]}"
        for where, sig in signatures.items()
        for name in sig.parameters
        if name in RETIRED
    ]
    assert not bad, bad


def test_segmentation_builders_say_out_channels_and_classifiers_num_classes(signatures):
    for where in SEGMENTATION:
        params = signatures[where].parameters
        assert "out_channels" in params and "num_classes" not in params, where
        assert "final_activation" in params, where
    for where in CLASSIFIERS:
        params = signatures[where].parameters
        assert "num_classes" in params and "out_channels" not in params, where


def test_torch_networks_take_spatial_dims_and_no_input_shape(signatures):
    for where, sig in signatures.items():
        if where.startswith("mednets.torch."):
            assert "input_shape" not in sig.parameters, f"{where}: use spatial_size (no channels)"
    for where in ("mednets.torch.nvnet.NVNet", "mednets.torch.resnet3d.ResNet3d"):
        assert "spatial_dims" in signatures[where].parameters, where


def test_depth_means_levels_only(signatures):
    """ResNet's layer count is ``num_layers``; ``depth`` is left for U-Net levels."""
    assert "num_layers" in signatures["mednets.torch.resnet3d.ResNet3d"].parameters
    for where, sig in signatures.items():
        if "depth" in sig.parameters:
            assert where.startswith("mednets.keras.unet3plus.") or where.startswith(
                "mednets.keras.blocks."
            ), f"{where} takes `depth`; is it a number of levels?"
