"""Benchmark: random 3D patch reads from an HDF5 store vs re-reading NIfTI files.

Usage::

    python benchmarks/bench_h5_vs_nifti.py [--patch 64] [--n-h5 60] [--n-nifti 3] [--seed 0]

Uses the real BraTS sample (``mednets.data.sample_brats(download=False)``) and falls back
to a 240 x 240 x 155 phantom when no copy is on disk. Every method reads all four
modalities and the label for one random patch. Prints a Markdown table and the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from mednets.data import (
    H5Volumes,
    SampleNotAvailable,
    convert_to_h5,
    crop_patch,
    load_subject,
    make_phantom,
    sample_brats,
    sample_patch_start,
    save_nifti,
    subject_from_dir,
)
from mednets.utils import markdown_table


def _time_reads(read, starts):
    """Patches per second and milliseconds per patch (wall clock), and CPU ms per patch."""
    t0, c0 = time.perf_counter(), time.process_time()
    for start in starts:
        read(start)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return len(starts) / seconds, 1000 * seconds / len(starts), 1000 * cpu / len(starts)


def _size(paths):
    return sum(Path(p).stat().st_size for p in paths)


def run(patch=64, n_h5=60, n_nifti=3, seed=0, workdir=None):
    """Run the benchmark; returns ``(rows, headers, source)``."""
    size = (patch,) * 3
    workdir = Path(workdir or tempfile.mkdtemp(prefix="mednets-bench-"))
    try:
        subject = sample_brats(download=False)
        source = "real BraTS sample (240x240x155)"
    except SampleNotAvailable:
        image, label = make_phantom((240, 240, 155), seed=seed)
        d = workdir / "phantom"
        d.mkdir()
        for c, mod in enumerate(("flair", "t1", "t1ce", "t2")):
            save_nifti(image[c], np.eye(4), d / f"phantom_{mod}.nii.gz")
        save_nifti(label, np.eye(4), d / "phantom_seg.nii.gz")
        subject = subject_from_dir(d)
        source = "phantom (240x240x155), no real sample on disk"
    image, label, meta = load_subject(subject)
    shape = image.shape[1:]
    rng = np.random.default_rng(seed)
    starts = [sample_patch_start(shape, size, rng) for _ in range(max(n_h5, n_nifti))]
    gz_files = list(subject.images.values()) + [subject.label]
    rows = []

    # 1. What the seed's workflow does without a store: decode the .nii.gz files every time.
    def read_gz(start):
        im, lb, _ = load_subject(subject)
        return crop_patch(im, start, size), crop_patch(lb, start, size)

    rows.append(
        (
            "NIfTI .nii.gz, load all, then crop",
            *_time_reads(read_gz, starts[:n_nifti]),
            f"{_size(gz_files) / 2**20:.1f} MiB",
            "-",
        )
    )

    # 2. Uncompressed NIfTI (already RAS): nibabel's proxy reads only the slab it needs.
    nii_files = []
    for c in range(image.shape[0]):
        nii_files.append(save_nifti(image[c], np.eye(4), workdir / f"c{c}.nii"))
    nii_files.append(save_nifti(label, np.eye(4), workdir / "seg.nii"))
    proxies = [nib.load(str(p)).dataobj for p in nii_files]

    def read_nii(start):
        box = tuple(slice(s, s + n) for s, n in zip(start, size))
        return [np.asarray(p[box]) for p in proxies]

    rows.append(
        (
            "NIfTI .nii uncompressed, proxy slicing",
            *_time_reads(read_nii, starts[:n_h5]),
            f"{_size(nii_files) / 2**20:.1f} MiB",
            "-",
        )
    )

    # 3. HDF5 stores with three codecs and two chunk shapes (conversion from arrays in memory).
    for compression, chunk in (("lzf", 16), ("lzf", 32), ("gzip", 16), (None, 16)):
        path = workdir / f"store_{compression}_{chunk}.h5"
        t0 = time.perf_counter()
        convert_to_h5(
            [(subject.id, image, label)], path, compression=compression, chunks=(chunk,) * 3, progress=False
        )
        convert_s = time.perf_counter() - t0
        store = H5Volumes(path)
        store.read_patch(subject.id, starts[0], size)  # open the file once

        def read_h5(start, store=store):
            return store.read_patch(subject.id, start, size)

        timing = _time_reads(read_h5, starts[:n_h5])
        store.close()
        rows.append(
            (
                f"HDF5 chunks {chunk}^3, {compression or 'uncompressed'}",
                *timing,
                f"{path.stat().st_size / 2**20:.1f} MiB",
                f"{convert_s:.1f} s",
            )
        )
    headers = ["method", "patches/s", "wall ms/patch", "CPU ms/patch", "size on disk", "conversion"]
    return rows, headers, source


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch", type=int, default=64, help="cubic patch edge (default: 64)")
    parser.add_argument("--n-h5", type=int, default=60, help="patches per fast method (default: 60)")
    parser.add_argument("--n-nifti", type=int, default=3, help="patches for the .nii.gz method (default: 3)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mednets-bench-") as workdir:
        rows, headers, source = run(args.patch, args.n_h5, args.n_nifti, args.seed, workdir)
    print(f"Random {args.patch}^3 patch reads (4 modalities + label) from the {source}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs visible, {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.system()}"
    )
    print()
    print(markdown_table(rows, headers))


if __name__ == "__main__":
    main()
