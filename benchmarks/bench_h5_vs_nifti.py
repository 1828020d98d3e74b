"""Benchmark: random 3D patch reads from an HDF5 store vs re-reading NIfTI files.

Usage::

    python benchmarks/bench_h5_vs_nifti.py [--patch 64] [--n-h5 60] [--n-nifti 3] [--seed 0] [--quick]
        [--output benchmarks/results/h5_vs_nifti.json]

Uses the real BraTS sample (``mednets.data.sample_brats(download=False)``) and falls back
to a 240 x 240 x 155 phantom when no copy is on disk. Every method reads all four
modalities and the label for one random patch. Prints a Markdown table and writes the
results file (atomically), which Chapter 0 reads: per method the mean and every single
read's wall-clock milliseconds, and how it was measured (command, seed, commit, package
versions, CPU, date).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
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
from mednets.utils import atomic_write, markdown_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "h5_vs_nifti.json"
HEADERS = ["method", "patches/s", "wall ms/patch", "CPU ms/patch", "size on disk", "conversion"]


def _time_reads(read, starts):
    """Patches per second, wall and CPU ms per patch, and every read's wall ms."""
    each = []
    c0 = time.process_time()
    for start in starts:
        t0 = time.perf_counter()
        read(start)
        each.append(1000 * (time.perf_counter() - t0))
    cpu = time.process_time() - c0
    seconds = sum(each) / 1000
    return len(starts) / seconds, 1000 * seconds / len(starts), 1000 * cpu / len(starts), each


def _size(paths):
    return sum(Path(p).stat().st_size for p in paths)


def run(patch=64, n_h5=60, n_nifti=3, seed=0, workdir=None):
    """Run the benchmark; returns ``(rows, source)``: one dict per method, and the data used."""
    size = (patch,) * 3
    workdir = Path(workdir or tempfile.mkdtemp(prefix="mednets-bench-"))
    try:
        subject = sample_brats(download=False)
        source = "real BraTS sample (240x240x155)"
        convention = "brats2023"  # the sample is a BraTS 2023 case: 3 = enhancing
    except SampleNotAvailable:
        image, label = make_phantom((240, 240, 155), seed=seed)
        d = workdir / "phantom"
        d.mkdir()
        for c, mod in enumerate(("flair", "t1", "t1ce", "t2")):
            save_nifti(image[c], np.eye(4), d / f"phantom_{mod}.nii.gz")
        save_nifti(label, np.eye(4), d / "phantom_seg.nii.gz")
        subject = subject_from_dir(d)
        source = "phantom (240x240x155), no real sample on disk"
        convention = "brats2018"  # phantoms: 4 = enhancing
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
        _row("NIfTI .nii.gz, load all, then crop", _time_reads(read_gz, starts[:n_nifti]), _size(gz_files))
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
        _row("NIfTI .nii uncompressed, proxy slicing", _time_reads(read_nii, starts[:n_h5]), _size(nii_files))
    )

    # 3. HDF5 stores with three codecs and two chunk shapes (conversion from arrays in memory).
    for compression, chunk in (("lzf", 16), ("lzf", 32), ("gzip", 16), (None, 16)):
        path = workdir / f"store_{compression}_{chunk}.h5"
        t0 = time.perf_counter()
        convert_to_h5(
            [(subject.id, image, label)],
            path,
            compression=compression,
            chunks=(chunk,) * 3,
            progress=False,
            label_convention=convention,
        )
        convert_s = time.perf_counter() - t0
        store = H5Volumes(path)
        store.read_patch(subject.id, starts[0], size)  # open the file once

        def read_h5(start, store=store):
            return store.read_patch(subject.id, start, size)

        timing = _time_reads(read_h5, starts[:n_h5])
        store.close()
        name = f"HDF5 chunks {chunk}^3, {compression or 'uncompressed'}"
        rows.append(_row(name, timing, path.stat().st_size, convert_s))
    return rows, source


def _row(method, timing, size_bytes, convert_s=None):
    """One method's results, as a JSON-ready dict."""
    per_s, wall_ms, cpu_ms, each = timing
    return {
        "method": method,
        "patches_per_s": per_s,
        "wall_ms_per_patch": wall_ms,
        "cpu_ms_per_patch": cpu_ms,
        "wall_ms_each": [round(t, 3) for t in each],
        "size_mib": size_bytes / 2**20,
        "conversion_s": convert_s,
    }


def table(rows):
    """The results as a Markdown table (``mednets.utils.markdown_table``)."""
    return markdown_table(
        [
            (
                r["method"],
                r["patches_per_s"],
                r["wall_ms_per_patch"],
                r["cpu_ms_per_patch"],
                f"{r['size_mib']:.1f} MiB",
                "-" if r["conversion_s"] is None else f"{r['conversion_s']:.1f} s",
            )
            for r in rows
        ],
        HEADERS,
    )


def _cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _commit():
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def environment():
    """How the numbers were measured: machine, package versions, commit and date."""
    import h5py
    import nibabel

    import mednets

    return {
        "cpu": _cpu_name(),
        "cpus_visible": os.cpu_count(),
        "machine": platform.machine(),
        "system": platform.system(),
        "python": platform.python_version(),
        "versions": {
            "mednets": mednets.__version__,
            "numpy": np.__version__,
            "h5py": h5py.__version__,
            "hdf5": h5py.version.hdf5_version,
            "nibabel": nibabel.__version__,
        },
        "commit": _commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch", type=int, default=64, help="cubic patch edge (default: 64)")
    parser.add_argument("--n-h5", type=int, default=60, help="patches per fast method (default: 60)")
    parser.add_argument("--n-nifti", type=int, default=3, help="patches for the .nii.gz method (default: 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a smoke test: 32^3 patches, 5 and 1 reads")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"results file (default: {RESULTS})")
    args = parser.parse_args(argv)
    if args.quick:
        args.patch, args.n_h5, args.n_nifti = 32, 5, 1
    with tempfile.TemporaryDirectory(prefix="mednets-bench-") as workdir:
        rows, source = run(args.patch, args.n_h5, args.n_nifti, args.seed, workdir)
    env = environment()
    results = {
        "benchmark": "random patch reads (4 modalities + label): NIfTI against HDF5",
        "command": " ".join(
            ["python", "benchmarks/bench_h5_vs_nifti.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "data": source,
        "patch": [args.patch] * 3,
        "n_reads": {"nifti_gz": args.n_nifti, "others": args.n_h5},
        "seed": args.seed,
        "environment": env,
        "results": rows,
    }
    with atomic_write(args.output, suffix=".json") as tmp:
        tmp.write_text(json.dumps(results, indent=1) + "\n")
    print(f"Random {args.patch}^3 patch reads (4 modalities + label) from the {source}")
    print(
        f"machine: {env['cpu']}, {env['cpus_visible']} CPUs visible, Python {env['python']}, {env['system']}"
    )
    print()
    print(table(rows))
    print(f"\nwritten: {args.output}")


if __name__ == "__main__":
    main()
