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

This module imports PyTorch only inside :func:`main`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["build_parser", "find_inputs", "main"]

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
    p.add_argument("checkpoint", type=Path, help="a checkpoint (OUT/checkpoints/best.pt of a training run)")
    p.add_argument("input", type=Path, help="a NIfTI file, a BraTS subject folder, or a folder of either")
    p.add_argument("output", type=Path, help="a .nii.gz file (one input) or a folder (a folder of inputs)")
    p.add_argument(
        "--overlap", type=float, default=0.5, help="sliding-window overlap in [0, 1). Default 0.5."
    )
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1... Default: the available GPU, else the CPU."
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
    import numpy as np
    import torch

    from mednets.data.nifti import load_nifti, save_like
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
    single = len(inputs) == 1 and (args.output.name.endswith((".nii", ".nii.gz")))
    if len(inputs) > 1 and args.output.name.endswith((".nii", ".nii.gz")):
        parser.error(f"{len(inputs)} inputs need an output folder, got the file name {args.output}")
    device = torch.device(args.device) if args.device else default_device()
    model = build_model(config)
    load_checkpoint(args.checkpoint, model)
    model.to(device).eval()
    for case_id, path in inputs:
        if config["dataset"] == "brats":
            from mednets.data.brats import convention_from_naming, load_subject, subject_from_dir

            subject = subject_from_dir(path, config["modalities"])
            image, _, meta = load_subject(subject, config["modalities"])
            reference = subject.images[config["modalities"][0]]
            names = [Path(p).name for p in subject.images.values()]
            convention = convention_from_naming(names) or "brats2023"
        else:
            image, _, _ = load_nifti(path, channels=True)
            reference, convention = path, config["label_convention"]
        if image.shape[0] != config["in_channels"]:
            parser.error(f"{path}: the network takes {config['in_channels']} channels, got {image.shape[0]}")
        volume = torch.from_numpy(zscore_normalise(image, brain_mask(image))).to(device)
        with torch.no_grad():
            probs = sliding_window_inference(model.segment, volume, config["crop"], overlap=args.overlap)
        label = probabilities_to_label(config, probs.cpu(), convention)
        target = args.output if single else args.output / f"{case_id}.nii.gz"
        save_like(label, reference, target, dtype=np.uint8)
        print(f"{case_id}: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
