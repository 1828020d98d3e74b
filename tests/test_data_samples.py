"""Tests for mednets.data.samples: lookup order, verified atomic download, offline errors.

No test touches the network: downloads use file:// URLs or a fake opener.
"""

import hashlib
import io
import os
import shutil
import urllib.error
from pathlib import Path

import pytest

from mednets.data import samples
from mednets.data.samples import (
    SAMPLE_FILES,
    SampleNotAvailable,
    cache_dir,
    download_file,
    file_digest,
    sample_brats,
    sample_dirs,
)


def shared_data() -> Path:
    """The shared data folder: $MEDNETS_DATA, else ../shared/data beside the repository."""
    if os.environ.get("MEDNETS_DATA"):
        return Path(os.environ["MEDNETS_DATA"])
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No MEDNETS_DATA, and a cache inside tmp_path."""
    monkeypatch.delenv("MEDNETS_DATA", raising=False)
    monkeypatch.delenv("MEDNETS_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path


@pytest.fixture
def fake_source(tmp_path, monkeypatch):
    """Five small fake files served from file:// URLs, with their true checksums."""
    src = tmp_path / "source"
    src.mkdir()
    table = {}
    for i, name in enumerate(SAMPLE_FILES):
        data = f"fake {name} {i}".encode() * 100
        (src / f"remote_{name}").write_bytes(data)
        table[name] = ((src / f"remote_{name}").as_uri(), hashlib.sha256(data).hexdigest())
    monkeypatch.setattr(samples, "SAMPLE_FILES", table)
    return table


def _touch_all(directory):
    directory.mkdir(parents=True)
    for name in SAMPLE_FILES:
        (directory / name).write_bytes(b"x")


def test_cache_dir_order(isolated, monkeypatch):
    assert cache_dir() == isolated / "xdg" / "mednets"
    monkeypatch.setenv("MEDNETS_CACHE", str(isolated / "mine"))
    assert cache_dir() == isolated / "mine"
    monkeypatch.delenv("MEDNETS_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(isolated / "home"))
    assert cache_dir() == isolated / "home" / ".cache" / "mednets"


def test_mednets_data_is_searched_first(isolated, monkeypatch):
    _touch_all(isolated / "data" / "brats-sample")
    _touch_all(isolated / "xdg" / "mednets" / "brats-sample")
    monkeypatch.setenv("MEDNETS_DATA", str(isolated / "data"))
    assert sample_dirs()[0] == isolated / "data" / "brats-sample"
    subject = sample_brats(download=False)
    assert subject.id == "brats-sample"
    assert subject.images["t1ce"] == isolated / "data" / "brats-sample" / "t1c.nii.gz"
    assert subject.images["flair"].name == "t2f.nii.gz" and subject.label.name == "seg.nii.gz"
    # Without MEDNETS_DATA the cache copy is used.
    monkeypatch.delenv("MEDNETS_DATA")
    assert sample_brats(download=False).images["t1"].parent == isolated / "xdg" / "mednets" / "brats-sample"


def test_incomplete_copy_is_skipped(isolated, monkeypatch):
    d = isolated / "data" / "brats-sample"
    _touch_all(d)
    (d / "seg.nii.gz").unlink()
    monkeypatch.setenv("MEDNETS_DATA", str(isolated / "data"))
    with pytest.raises(SampleNotAvailable, match=r"download=False.*seg.nii.gz.*brats-sample"):
        sample_brats(download=False)


def test_verify_detects_a_corrupt_copy(isolated, monkeypatch, fake_source):
    d = isolated / "data" / "brats-sample"
    d.mkdir(parents=True)
    for name, (url, _) in fake_source.items():
        shutil.copyfile(url[len("file://") :], d / name)
    monkeypatch.setenv("MEDNETS_DATA", str(isolated / "data"))
    assert sample_brats(download=False, verify=True).id == "brats-sample"
    (d / "t2w.nii.gz").write_bytes(b"tampered")
    with pytest.raises(
        ValueError, match=r"SHA-256 mismatch for .*t2w.nii.gz: expected [0-9a-f]{64}, got [0-9a-f]{64}"
    ):
        sample_brats(download=False, verify=True)


def test_download_from_file_urls(isolated, fake_source):
    subject = sample_brats()
    target = isolated / "xdg" / "mednets" / "brats-sample"
    for name, (url, _) in fake_source.items():
        assert (target / name).read_bytes() == Path(url[len("file://") :]).read_bytes()
    assert subject.images["t2"] == target / "t2w.nii.gz"
    assert not [p for p in target.iterdir() if p.name.startswith(".")], "temporary files left behind"

    # The second call finds the cache and opens nothing.
    def no_network(*args, **kwargs):
        raise AssertionError("must not download again")

    assert sample_brats(opener=no_network).images["t2"] == target / "t2w.nii.gz"


def test_checksum_mismatch_leaves_nothing(isolated, fake_source, monkeypatch):
    url, _ = fake_source["t1c.nii.gz"]
    dest = isolated / "out" / "t1c.nii.gz"
    with pytest.raises(
        ValueError, match=r"SHA-256 mismatch for file://.*remote_t1c.nii.gz: expected 0{64}, got [0-9a-f]{64}"
    ):
        download_file(url, dest, "0" * 64)
    assert not dest.exists() and os.listdir(dest.parent) == []
    # Through sample_brats as well.
    table = dict(fake_source)
    table["seg.nii.gz"] = (table["seg.nii.gz"][0], "f" * 64)
    monkeypatch.setattr(samples, "SAMPLE_FILES", table)
    with pytest.raises(ValueError, match="SHA-256 mismatch"):
        sample_brats()
    assert not (isolated / "xdg" / "mednets" / "brats-sample" / "seg.nii.gz").exists()


def test_interrupted_download_leaves_nothing(isolated):
    class Broken(io.BytesIO):
        def read(self, n=-1):
            if self.tell() > 10:
                raise ConnectionResetError("connection dropped")
            return super().read(8)

    dest = isolated / "out" / "t2f.nii.gz"
    with pytest.raises(ConnectionResetError):
        download_file(
            "https://example.invalid/t2f.nii.gz",
            dest,
            "0" * 64,
            opener=lambda url, timeout: Broken(b"a" * 100),
        )
    assert os.listdir(dest.parent) == []


def test_offline_error_says_where_to_put_files(isolated, fake_source, monkeypatch):
    monkeypatch.setenv("MEDNETS_DATA", str(isolated / "data"))

    def offline(url, timeout):
        raise urllib.error.URLError("Temporary failure in name resolution")

    with pytest.raises(SampleNotAvailable) as info:
        sample_brats(opener=offline)
    message = str(info.value)
    assert "could not download" in message and "offline?" in message
    assert str(isolated / "data" / "brats-sample") in message
    assert str(isolated / "xdg" / "mednets" / "brats-sample") in message
    for name in SAMPLE_FILES:
        assert name in message


def test_real_urls_and_sums_match_the_data_readme():
    text = (shared_data() / "README.md").read_text()
    for name, (url, sha) in SAMPLE_FILES.items():
        assert sha in text, name
        assert url.split("/")[-1] in text
    assert all(
        url.startswith("https://raw.githubusercontent.com/BrainLesion/BraTS/528ab54")
        for url, _ in SAMPLE_FILES.values()
    )


def test_md5_download_and_file_digest(tmp_path):
    src = tmp_path / "archive.tar"
    src.write_bytes(b"a Decathlon archive" * 1000)
    md5 = hashlib.md5(src.read_bytes()).hexdigest()
    assert file_digest(src, "md5") == md5 and file_digest(src) == hashlib.sha256(src.read_bytes()).hexdigest()
    dest = download_file(src.as_uri(), tmp_path / "out" / "a.tar", md5, algorithm="md5")
    assert dest.read_bytes() == src.read_bytes()
    with pytest.raises(
        ValueError, match=rf"MD5 mismatch for file://.*archive.tar: expected 0{{32}}, got {md5}"
    ):
        download_file(src.as_uri(), tmp_path / "out" / "b.tar", "0" * 32, algorithm="md5")
    assert os.listdir(tmp_path / "out") == ["a.tar"]
    with pytest.raises(ValueError, match=r"algorithm must be one of \['md5', 'sha256'\], got 'sha1'"):
        download_file(src.as_uri(), tmp_path / "out" / "c.tar", "0", algorithm="sha1")


def test_missing_ok_prints_a_notice_only_when_both_fail(isolated, fake_source, monkeypatch, capsys):
    def offline(url, timeout):
        raise urllib.error.URLError("Temporary failure in name resolution")

    assert sample_brats(opener=offline, missing_ok=True) is None
    notice = capsys.readouterr().out
    assert notice.startswith("BraTS sample not available: could not download") and "brats-sample" in notice
    # A download whose checksum does not match is a failure too.
    table = dict(fake_source)
    table["t1c.nii.gz"] = (table["t1c.nii.gz"][0], "0" * 64)
    monkeypatch.setattr(samples, "SAMPLE_FILES", table)
    assert sample_brats(missing_ok=True) is None
    assert "SHA-256 mismatch" in capsys.readouterr().out
    # When the download works (or a copy is on disk), nothing is printed.
    monkeypatch.setattr(samples, "SAMPLE_FILES", fake_source)
    assert sample_brats(missing_ok=True).id == "brats-sample"
    assert sample_brats(missing_ok=True, opener=offline).id == "brats-sample"
    assert capsys.readouterr().out == ""


def test_the_shared_copy_is_used_first(monkeypatch, capsys):
    monkeypatch.setenv("MEDNETS_DATA", str(shared_data()))

    def no_network(*args, **kwargs):
        raise AssertionError("must not download")

    subject = sample_brats(opener=no_network, missing_ok=True, verify=True)
    assert subject.label == shared_data() / "brats-sample" / "seg.nii.gz"
    assert capsys.readouterr().out == ""
