"""Command line: convert a BraTS directory to an HDF5 store.

Usage::

    python -m mednets.data.convert ROOT OUT.h5 [--modalities flair t1 t1ce t2]
        [--crop-foreground] [--margin 2] [--compression lzf|gzip|none]
        [--chunks 16 16 16] [--append | --overwrite] [--quiet]

ROOT may use the BraTS 2018-2021 or 2023 layout (see
:func:`mednets.data.brats.find_brats_subjects`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from mednets.data.brats import DEFAULT_MODALITIES, LABEL_CONVENTIONS, find_brats_subjects
from mednets.data.h5store import convert_to_h5

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m mednets.data.convert``."""
    parser = argparse.ArgumentParser(
        prog="python -m mednets.data.convert",
        description="Convert a BraTS data set (NIfTI) into one chunked HDF5 store for fast patch reads.",
    )
    parser.add_argument("root", help="data set directory (BraTS 2018-2021 or 2023 layout)")
    parser.add_argument("out", help="output .h5 file (written atomically)")
    parser.add_argument(
        "--modalities",
        nargs="+",
        default=list(DEFAULT_MODALITIES),
        help="channel order (default: %(default)s); BraTS 2023 names t1n, t1c, t2w, t2f also work",
    )
    parser.add_argument(
        "--label-convention",
        choices=list(LABEL_CONVENTIONS),
        default=None,
        help="label convention of every subject (default: from the file naming, then the label values)",
    )
    parser.add_argument(
        "--crop-foreground", action="store_true", help="crop each subject to its brain bounding box"
    )
    parser.add_argument(
        "--margin", type=int, default=2, help="voxels kept around the foreground (default: 2)"
    )
    parser.add_argument("--compression", choices=["lzf", "gzip", "none"], default="lzf", help="default: lzf")
    parser.add_argument(
        "--chunks",
        type=int,
        nargs=3,
        default=[16, 16, 16],
        metavar=("X", "Y", "Z"),
        help="spatial chunk shape (default: 16 16 16)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--append", action="store_true", help="add to an existing store, skipping subjects already in it"
    )
    mode.add_argument("--overwrite", action="store_true", help="replace an existing store")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the converter; returns the process exit code (0 on success, 1 on bad input)."""
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        subjects = find_brats_subjects(
            args.root, modalities=args.modalities, label_convention=args.label_convention
        )
        print(f"found {len(subjects)} subjects under {args.root}")
        summary = convert_to_h5(
            subjects,
            args.out,
            modalities=args.modalities,
            label_convention=args.label_convention,
            crop_foreground=args.crop_foreground,
            margin=args.margin,
            chunks=args.chunks,
            compression=None if args.compression == "none" else args.compression,
            append=args.append,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        print(
            f"no file was written at {args.out}" if not args.append else f"{args.out} was left unchanged",
            file=sys.stderr,
        )
        return 1
    seconds = time.perf_counter() - start
    ratio = summary["raw_bytes"] / max(summary["bytes"], 1)
    print(
        f"wrote {len(summary['written'])} subjects, skipped {len(summary['skipped'])} already present; "
        f"{summary['n_subjects']} in {summary['path']}\n"
        f"file size {summary['bytes'] / 2**20:.1f} MiB "
        f"(arrays written: {summary['raw_bytes'] / 2**20:.1f} MiB "
        f"uncompressed, ratio {ratio:.1f}x) in {seconds:.1f} s"
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
