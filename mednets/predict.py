"""Segment volumes with a trained checkpoint: ``python -m mednets.predict CHECKPOINT IN OUT``.

``IN`` is a NIfTI file (a Decathlon-style image, 3D or 4D with the channels last), a
BraTS subject folder (its four modality files), or a folder of either; ``OUT`` is then a
``.nii.gz`` file, or a folder that receives one ``<case>.nii.gz`` per input. The
checkpoint (written by ``python -m mednets.train``) carries its config, from which the
network, the channel order, the window and the label convention are rebuilt. Each
volume is z-scored inside the brain as in training, segmented with a sliding window
(:func:`mednets.torch.inference.sliding_window_inference`), turned into a label map and
written on the input's own grid, with its affine, header and on-disk axis order
(:func:`mednets.data.nifti.save_like`).

A Keras checkpoint (``OUT/checkpoints/best.keras`` of a Keras recipe) is read with the
``OUT/config.json`` of its run: the network is rebuilt from the config, takes the
checkpoint's weights, and segments each volume whole after centre-padding it to the
recipe's ``pad_to``, as in training (:func:`mednets.train.load_keras_predictor`).

This module imports PyTorch or Keras only inside :func:`main`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["build_parser", "find_inputs", "keras_run_config", "main"]

_NOT_CLINICAL = "Research and teaching code: not for clinical use."


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m mednets.predict``.

    Example:
        >>> build_parser().parse_args(["ck.pt", "in.nii.gz", "out.nii.gz"]).overlap
        0.5
    """
    p = argparse.ArgumentParser(
        prog="python -m mednets.predict",
        description="Segment NIfTI volumes with a checkpoint of python -m mednets.train and write the "
        "label maps on each input's grid. " + _NOT_CLINICAL,
    )
    p.add_argument(
        "checkpoint",
        type=Path,
        help="a checkpoint of a training run: OUT/checkpoints/best.pt, or best.keras (with OUT/config.json)",
    )
    p.add_argument("input", type=Path, help="a NIfTI file, a BraTS subject folder, or a folder of either")
    p.add_argument("output", type=Path, help="a .nii.gz file (one input) or a folder (a folder of inputs)")
    p.add_argument(
        "--overlap", type=float, default=0.5, help="sliding-window overlap in [0, 1). Default 0.5."
    )
    p.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:1... Default: the available GPU, else the CPU. PyTorch checkpoints only.",
    )
    return p


def _is_nifti(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.name.endswith((".nii", ".nii.gz"))


def _stem(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else name.removesuffix(".nii")


def find_inputs(source: Path, dataset: str) -> list[tuple[str, Path]]:
    """The cases to segment: ``[(case id, path)]`` from a file, a subject folder or a folder of them.

    Args:
        source: The ``IN`` argument.
        dataset: ``"brats"`` (subject folders of four files) or ``"decathlon"``
            (one NIfTI file per case).

    Returns:
        A list of ``(case id, file or subject folder)``; one entry for a single input.

    Raises:
        ValueError: If ``source`` does not exist or holds nothing to segment.

    Example:
        >>> find_inputs(Path("/nonexistent.nii.gz"), "decathlon")
        Traceback (most recent call last):
        ...
        ValueError: input /nonexistent.nii.gz does not exist
    """
    source = Path(source)
    if not source.exists():
        raise ValueError(f"input {source} does not exist")
    if dataset == "brats":
        from mednets.data.brats import find_brats_subjects

        if any(_is_nifti(p) for p in source.iterdir()) if source.is_dir() else False:
            return [(source.name, source)]  # one subject folder
        if source.is_dir():
            return [(s.id, Path(next(iter(s.images.values()))).parent) for s in find_brats_subjects(source)]
        raise ValueError(f"input {source}: a BraTS checkpoint takes a subject folder (four modality files)")
    if _is_nifti(source):
        return [(_stem(source), source)]
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if _is_nifti(p))
        if files:
            return [(_stem(p), p) for p in files]
    raise ValueError(f"input {source}: expected a .nii/.nii.gz file or a folder holding some")


def keras_run_config(checkpoint: Path) -> dict:
    """The training config of a Keras checkpoint: the ``config.json`` of its run.

    Looked up beside the checkpoint and one folder up (``OUT/checkpoints/best.keras``
    -> ``OUT/config.json``).

    Raises:
        ValueError: If there is no such file, or it is not a Keras recipe's.

    Example:
        >>> keras_run_config(Path("/nonexistent/checkpoints/best.keras"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: /nonexistent/checkpoints/best.keras: a Keras checkpoint is read with the config.json ...
    """
    checkpoint = Path(checkpoint)
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        path = folder / "config.json"
        if path.is_file():
            config = json.loads(path.read_text()).get("config") or {}
            if config.get("framework") != "keras" or "recipe" not in config:
                raise ValueError(
                    f"{path} is not the config of a Keras recipe (framework {config.get('framework')!r}); "
                    f"{checkpoint} needs the config.json of its own run"
                )
            return config
    raise ValueError(
        f"{checkpoint}: a Keras checkpoint is read with the config.json of its run "
        f"(OUT/config.json for OUT/checkpoints/{checkpoint.name}); none found in {checkpoint.parent} "
        f"or {checkpoint.parent.parent}"
    )


def _load_input(config: dict, path: Path):
    """``(image (C, X, Y, Z) RAS+, reference file, label convention)`` of one input."""
    if config["dataset"] == "brats":
        from mednets.data.brats import convention_from_naming, load_subject, subject_from_dir

        subject = subject_from_dir(path, config["modalities"])
        image, _, _ = load_subject(subject, config["modalities"])
        names = [Path(p).name for p in subject.images.values()]
        return image, subject.images[config["modalities"][0]], convention_from_naming(names) or "brats2023"
    from mednets.data.nifti import load_nifti

    image, _, _ = load_nifti(path, channels=True)
    return image, path, config["label_convention"]


def _targets(parser, args, inputs):
    single = len(inputs) == 1 and (args.output.name.endswith((".nii", ".nii.gz")))
    if len(inputs) > 1 and args.output.name.endswith((".nii", ".nii.gz")):
        parser.error(f"{len(inputs)} inputs need an output folder, got the file name {args.output}")
    return [
        (case_id, path, args.output if single else args.output / f"{case_id}.nii.gz")
        for case_id, path in inputs
    ]


def _predict_keras(parser, args) -> int:
    import numpy as np

    from mednets.data.nifti import save_like
    from mednets.train import keras_segment, load_keras_predictor

    try:
        config = keras_run_config(args.checkpoint)
        inputs = find_inputs(args.input, config["dataset"])
    except ValueError as err:
        parser.error(str(err))
    targets = _targets(parser, args, inputs)
    net = load_keras_predictor(config, args.checkpoint)
    for case_id, path, target in targets:
        image, reference, convention = _load_input(config, path)
        if image.shape[0] != config["in_channels"]:
            parser.error(f"{path}: the network takes {config['in_channels']} channels, got {image.shape[0]}")
        label = keras_segment(net, config, image, convention)
        save_like(label, reference, target, dtype=np.uint8)
        print(f"{case_id}: {target}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Returns:
        0 on success (argparse exits with 2 on bad input).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 <= args.overlap < 1:
        parser.error(f"--overlap must be in [0, 1), got {args.overlap}")
    if not args.checkpoint.is_file():
        parser.error(f"checkpoint {args.checkpoint} not found")
    if args.checkpoint.suffix == ".keras":
        return _predict_keras(parser, args)
    import numpy as np
    import torch

    from mednets.data.nifti import save_like
    from mednets.data.transforms import brain_mask, zscore_normalise
    from mednets.torch.distributed import default_device
    from mednets.torch.inference import sliding_window_inference
    from mednets.torch.train import load_checkpoint
    from mednets.train import build_model, probabilities_to_label

    try:
        state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        config = state.get("config") if isinstance(state, dict) else None
        if not config or "recipe" not in config:
            raise ValueError(
                f"{args.checkpoint} has no training config; was it written by python -m mednets.train?"
            )
        inputs = find_inputs(args.input, config["dataset"])
    except ValueError as err:
        parser.error(str(err))
    targets = _targets(parser, args, inputs)
    device = torch.device(args.device) if args.device else default_device()
    model = build_model(config)
    load_checkpoint(args.checkpoint, model)
    model.to(device).eval()
    for case_id, path, target in targets:
        image, reference, convention = _load_input(config, path)
        if image.shape[0] != config["in_channels"]:
            parser.error(f"{path}: the network takes {config['in_channels']} channels, got {image.shape[0]}")
        volume = torch.from_numpy(zscore_normalise(image, brain_mask(image))).to(device)
        with torch.no_grad():
            probs = sliding_window_inference(model.segment, volume, config["crop"], overlap=args.overlap)
        label = probabilities_to_label(config, probs.cpu(), convention)
        save_like(label, reference, target, dtype=np.uint8)
        print(f"{case_id}: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
