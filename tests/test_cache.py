"""The compiled-model cache on disk: one entry per package content wherever the package lies, and `inferd cache`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import inferd

DAY = 86400


@pytest.fixture()
def two_copies(default_package: Path, tmp_path: Path) -> tuple[Path, Path]:
    copies = tmp_path / "a" / "efficientnet-lite0", tmp_path / "b" / "efficientnet-lite0"
    for copy in copies:
        shutil.copytree(default_package, copy)
    return copies


def run_inferd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "inferd", *args], capture_output=True, text=True, timeout=300)


def _blobs(cache: Path) -> list[Path]:
    return sorted(cache.glob("compiled/*/*.blob"))


def test_the_same_package_in_another_folder_loads_from_the_cache(two_copies: tuple[Path, Path], tmp_path: Path) -> None:
    """OpenVINO knows a model by its path: a copy used to compile again, add a blob, and still say `cached`."""
    cache = tmp_path / "cache"
    first = inferd.load(two_copies[0], backend="openvino", precision="fp32", cache_dir=cache)
    assert not first.load_info.cached and len(_blobs(cache)) == 1
    blob = _blobs(cache)[0]
    written = blob.stat().st_mtime_ns
    for copy in (two_copies[1], two_copies[0]):
        again = inferd.load(copy, backend="openvino", precision="fp32", cache_dir=cache)
        assert again.load_info.cached
        assert _blobs(cache) == [blob] and blob.stat().st_mtime_ns == written  # imported, not compiled again
    entry = blob.parent  # its size counts the blob and what it says of itself, not the package behind the link
    owned = blob.stat().st_size + (entry / "entry.json").stat().st_size
    assert [e["bytes"] for e in _listed(cache)["entries"] if e["path"] == str(entry)] == [owned]
    shutil.rmtree(two_copies[0])  # the link the entry compiles from now points to a folder that is gone
    assert inferd.load(two_copies[1], backend="openvino", precision="fp32", cache_dir=cache).load_info.cached


def _listed(cache: Path) -> dict[str, object]:
    ran = run_inferd("cache", "list", "--json", "--cache-dir", str(cache))
    assert ran.returncode == 0, ran.stderr
    return dict(json.loads(ran.stdout))


def test_cache_list_says_what_each_entry_holds_and_prune_drops_the_least_recently_used(
        default_package: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    for backend in ("openvino", "onnxruntime"):
        inferd.load(default_package, backend=backend, precision="fp32", cache_dir=cache)
    listed = _listed(cache)
    compiled = {e["holds"].split(": ")[1].split()[0]: e for e in listed["entries"] if e["kind"] == "compiled"}
    assert sorted(compiled) == ["onnxruntime", "openvino"]
    assert all(e["holds"].startswith("efficientnet-lite0 1: ") and e["bytes"] > 1_000_000 for e in compiled.values())
    assert any(e["kind"] == "choices" and "measured fastest" in e["holds"] for e in listed["entries"])
    assert listed["total_bytes"] == sum(e["bytes"] for e in listed["entries"])

    old = Path(compiled["openvino"]["path"])
    os.utime(old, (time.time() - 40 * DAY, time.time() - 40 * DAY))
    looked = json.loads(run_inferd("cache", "prune", "--unused-for", "30d", "--dry-run", "--json",
                                   "--cache-dir", str(cache)).stdout)
    assert [e["path"] for e in looked["removed"]] == [str(old)] and old.is_dir()
    assert run_inferd("cache", "prune", "--unused-for", "30d", "--cache-dir", str(cache)).returncode == 0
    assert not old.exists()
    reloaded = inferd.load(default_package, backend="openvino", precision="fp32", cache_dir=cache)
    assert not reloaded.load_info.cached  # compiled again, and the entry is back, most recently used
    entries = _listed(cache)["entries"]
    assert entries[-1]["path"] == str(old)

    keep = entries[-1]["bytes"]
    cut = json.loads(run_inferd("cache", "prune", "--max-size", str(keep), "--json", "--cache-dir", str(cache)).stdout)
    assert str(old) not in [e["path"] for e in cut["removed"]]
    assert [e["path"] for e in _listed(cache)["entries"]] == [str(old)]
    assert run_inferd("cache", "prune", "--all", "--cache-dir", str(cache)).returncode == 0
    assert _listed(cache)["entries"] == []


@pytest.mark.parametrize(("args", "message"), [
    ((), "say what to remove"),
    (("--unused-for", "30"), "a number and a unit"),
    (("--unused-for", "-2d"), "zero or more"),
    (("--max-size", "inf"), "cannot read the size"),
    (("--max-size", "-1G"), "negative"),
])
def test_cache_prune_refuses_what_it_cannot_read(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    ran = run_inferd("cache", "prune", *args, "--cache-dir", str(tmp_path))
    assert ran.returncode == 2 and message in ran.stderr + ran.stdout
