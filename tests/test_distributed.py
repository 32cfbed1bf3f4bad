"""scan on Dask: a LocalCluster of 2 worker processes gives the serial run's results, and each
worker loads the model once."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import zarr
from builders import flatten_gemm, realistic
from PIL import Image

from onnxfcn import convert
from onnxfcn.scan import ScanModel, ScanOptions, open_input, scan_source
from onnxfcn.scan.runner import Runner

pytest.importorskip("distributed")
from onnxfcn.scan.distributed import client, scan_files, scan_tiled, worker_loads

pytestmark = pytest.mark.dask


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    conv, _ = convert(realistic(flatten_gemm(k=6, seed=21, padded=True)))
    path = tmp_path_factory.mktemp("dask") / "m.fcn.onnx"
    onnx.save(conv, path)
    return path


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    with client(workers=2) as c:
        yield c


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(22)
    files = []
    for k in range(6):
        if k % 2:
            p = folder / f"img{k}.png"
            Image.fromarray(rng.integers(0, 256, (30 + 7 * k, 41, 3), dtype=np.uint8)).save(p)
        else:
            p = folder / f"arr{k}.npy"
            np.save(p, rng.standard_normal((3, 25 + 5 * k, 33)).astype(np.float32))
        files.append(p)
    return files


def test_one_task_per_file_equals_the_serial_run(cluster: Any, model_path: Path, inputs: list[Path]) -> None:
    sm = ScanModel.load(model_path)
    opts = ScanOptions(top=4)
    runner = Runner(sm)
    serial = [scan_source(runner, sm, open_input(f, sm), opts) for f in inputs]
    spread = list(scan_files(cluster, sm, inputs, opts, None))
    assert [r.name for r in spread] == [f.stem for f in inputs]
    for a, b in zip(serial, spread):
        np.testing.assert_array_equal(a.scores, b.scores)
        assert [c.to_dict() for c in a.cells] == [c.to_dict() for c in b.cells]
    loads = cluster.run(worker_loads)
    assert len(loads) == 2 and all(n <= 1 for n in loads.values()) and sum(loads.values()) >= 1
    # A second batch: no worker loads the model again.
    list(scan_files(cluster, sm, inputs, opts, None))
    assert all(n <= 1 for n in cluster.run(worker_loads).values())


@pytest.mark.parametrize("kind", ["array_in_memory", "npy_file", "image_file"])
def test_one_task_per_tile_equals_the_serial_tiles(cluster: Any, model_path: Path, tmp_path: Path, kind: str) -> None:
    sm = ScanModel.load(model_path)
    rng = np.random.default_rng(23)
    item: Any
    if kind == "array_in_memory":
        item = rng.standard_normal((3, 130, 117)).astype(np.float32)
    elif kind == "npy_file":
        item = tmp_path / "x.npy"
        np.save(item, rng.standard_normal((121, 140, 3)).astype(np.float32))
    else:
        item = tmp_path / "x.png"
        Image.fromarray(rng.integers(0, 256, (140, 99, 3), dtype=np.uint8)).save(item)
    opts = ScanOptions(top=None, tile=50)
    serial = scan_source(Runner(sm), sm, open_input(item, sm), opts)
    spread = scan_tiled(cluster, sm, open_input(item, sm), opts)
    assert serial.tiles == spread.tiles > 4
    np.testing.assert_array_equal(spread.scores, serial.scores)
    np.testing.assert_array_equal(spread.best_class, serial.best_class)
    assert all(n <= 1 for n in cluster.run(worker_loads).values())


def test_cli_workers_writes_what_the_serial_cli_writes(model_path: Path, inputs: list[Path], tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "onnxfcn", "scan", str(model_path), *args], capture_output=True,
                              text=True, timeout=300, check=False)

    folder = inputs[0].parent
    a = cli(str(folder), "--out", str(tmp_path / "serial"), "--no-png")
    b = cli(str(folder), "--out", str(tmp_path / "dask"), "--no-png", "--workers", "2")
    assert a.returncode == 0 and b.returncode == 0, (a.stderr, b.stderr)
    assert b.stderr == ""  # the cluster's own logging stays quiet
    for f in inputs:
        np.testing.assert_array_equal(np.load(tmp_path / "serial" / f"{f.stem}.scores.npy"),
                                      np.load(tmp_path / "dask" / f"{f.stem}.scores.npy"))
        sa = json.loads((tmp_path / "serial" / f"{f.stem}.json").read_text())
        sb = json.loads((tmp_path / "dask" / f"{f.stem}.json").read_text())
        assert sa == sb
    # One big .npy in tiles across the workers.
    np.save(tmp_path / "big.npy", np.random.default_rng(24).standard_normal((150, 160, 3)).astype(np.float32))
    c = cli(str(tmp_path / "big.npy"), "--out", str(tmp_path / "t1"), "--no-png", "--tile", "48")
    d = cli(str(tmp_path / "big.npy"), "--out", str(tmp_path / "t2"), "--no-png", "--tile", "48", "--workers", "2")
    assert c.returncode == 0 and d.returncode == 0, (c.stderr, d.stderr)
    assert "tiles" in d.stdout
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "t1" / "big.scores.zarr")[:],
                                  zarr.open_array(tmp_path / "t2" / "big.scores.zarr")[:])


def test_cli_scheduler_uses_a_running_cluster(cluster: Any, model_path: Path, inputs: list[Path], tmp_path: Path) -> None:
    address = cluster.scheduler.address
    res = subprocess.run([sys.executable, "-m", "onnxfcn", "scan", str(model_path), str(inputs[0]), str(inputs[1]),
                          "--out", str(tmp_path), "--no-png", "--scheduler", address], capture_output=True, text=True,
                         timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    sm = ScanModel.load(model_path)
    for f in inputs[:2]:
        want = scan_source(Runner(sm), sm, open_input(f, sm), ScanOptions()).scores
        np.testing.assert_array_equal(np.load(tmp_path / f"{f.stem}.scores.npy"), want)
    assert all(n <= 1 for n in cluster.run(worker_loads).values())  # the cluster's workers kept their sessions


def test_cli_workers_quiet_means_quiet(model_path: Path, tmp_path: Path) -> None:
    """-q prints nothing, Dask's warnings included (a 12 MB picture in tiles makes a large graph)."""
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(25).integers(0, 256, (2000, 2000, 3), dtype=np.uint8)).save(big)
    res = subprocess.run([sys.executable, "-m", "onnxfcn", "scan", str(model_path), str(big), "--out", str(tmp_path / "o"),
                          "--no-png", "--tile", "512", "--workers", "2", "-q"], capture_output=True, text=True,
                         timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "" and res.stderr == "", (res.stdout, res.stderr)
