"""The offline bundle (scripts/wheel_bundle.py) and the GPU check that installs it (scripts/gpu_check.sh).

The slow test proves here what the GPU machine will do: a venv standing in for its image (this interpreter's
packages of the image's names, with their own requirements, and nothing else: no Ray, Optuna, seqeval, datasets
or packaged MiniLM), the bundle built for this Python, installed with no index, and the check's dry run in it."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import venv
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.conftest import ROOT, SHARED_DATA, snapshot

sys.path.insert(0, str(ROOT / "scripts"))
import wheel_bundle  # noqa: E402

LOCK = ROOT / "scripts" / "bundle" / "cp312.json"
MIB = 2**20


def test_the_cp312_bundle_fits_one_device_call():
    """The locked cp312 wheels, the gzipped CoNLL files and the tokenizer stay under 60 MiB, so the bundle and the
    1.2 MB tree travel in one 64 MiB call; Ray's wheel is locked at its size without the Java jar."""
    from tuner.models import packaged_minilm_path

    lock = json.loads(LOCK.read_text())
    wheels = sum(w["bytes"] for w in lock["wheels"])
    data = wheel_bundle.data_bytes(SHARED_DATA)
    tokenizer = sum((Path(packaged_minilm_path()) / n).stat().st_size for n in wheel_bundle.TOKENIZER_FILES)
    total = wheels + data + tokenizer
    assert total < wheel_bundle.LIMIT_MIB * MIB, f"{total / MIB:.1f} MiB"
    ray = next(w for w in lock["wheels"] if w["name"] == "ray")
    assert ray["bytes"] < 50 * MIB, ray  # 79 MB with ray/jars/ray_dist.jar


def test_the_lock_pins_every_dependency_the_image_lacks():
    """Each dependency of pyproject.toml that the image has not is a top-level pin of the cp312 lock, at a version
    its specifier admits, with its wheel in the lock; the image's own packages are not in it. (The pins are the
    versions the tests ran with when it was locked: `--resolve --save-lock` re-locks after an upgrade.)"""
    import tomllib

    lock = json.loads(LOCK.read_text())
    image = wheel_bundle.read_image(wheel_bundle.IMAGE_FILE)
    locked = {wheel_bundle.normalize(w["name"]): w["version"] for w in lock["wheels"]}
    pins = {wheel_bundle.normalize(Requirement(spec).name): Requirement(spec) for spec in lock["requirements"]}
    for spec in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        wanted = Requirement(spec)
        name = wheel_bundle.normalize(wanted.name)
        if name in image:
            continue
        assert name in pins, f"{wanted.name} is not in {LOCK.name}: re-lock with --resolve --save-lock"
        (version,) = [s.version for s in pins[name].specifier]
        assert locked[name] == version and wanted.specifier.contains(version), (wanted, version)
    assert {"ray", "optuna", "seqeval", "datasets"} <= set(locked)
    assert not set(locked) & image


def test_ray_repacked_without_its_jar_keeps_a_consistent_record(tmp_path):
    """The repack drops ray/jars/ and its RECORD lines, and keeps every other member, byte for byte, with its mode."""
    wheel = tmp_path / "ray-9.9.9-cp311-cp311-manylinux2014_x86_64.whl"
    members = {"ray/__init__.py": b"", "ray/core/raylet": b"\x7fELF", "ray/jars/ray_dist.jar": b"x" * 4096}
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o755 if name.endswith("raylet") else 0o644) << 16
            archive.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
        record = "".join(f"{name},sha256=x,{len(data)}\n" for name, data in members.items())
        archive.writestr("ray-9.9.9.dist-info/RECORD", record + "ray-9.9.9.dist-info/RECORD,,\n")
    dropped = wheel_bundle.repack_without(wheel, wheel_bundle.DROPPED_FROM_RAY)
    assert dropped > 0
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        record = archive.read("ray-9.9.9.dist-info/RECORD").decode()
        assert "ray/jars/ray_dist.jar" not in names and "ray/jars/" not in record
        listed = [line.split(",")[0] for line in record.splitlines()]
        assert sorted(listed) == sorted(names)
        assert archive.read("ray/core/raylet") == b"\x7fELF"
        assert archive.getinfo("ray/core/raylet").external_attr >> 16 == 0o755


def test_a_bundle_over_the_limit_is_refused_before_any_download(tmp_path, capsys):
    folder = tmp_path / "bundle"
    status = wheel_bundle.main([str(folder), "--limit-mib", "1"])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "over the 1.0 MiB limit" in err and "cp312.json" in err
    assert not folder.exists()


def test_a_bundle_inside_the_checkout_must_be_git_ignored(capsys):
    folder = ROOT / "bundle_not_ignored"
    status = wheel_bundle.main([str(folder), "--limit-mib", "1"])
    err = capsys.readouterr().err
    assert status == 2 and "not git-ignored" in err, err
    assert not folder.exists()


def test_gpu_check_without_a_gpu_stops_at_once():
    """Not a dry run, on a machine whose interpreters see no GPU: one line and exit 2 before any step, rather
    than a report of failed steps."""
    before = snapshot(ROOT / "results")
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "no interpreter here whose torch sees a GPU" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not proc.stdout
    assert snapshot(ROOT / "results") == before


def stand_in_image(target: Path) -> Path:
    """A venv holding this interpreter's packages of the image's names and what they require, linked in through
    a .pth file: what the GPU image has, at this machine's versions. Returns its python."""
    image = wheel_bundle.read_image(wheel_bundle.IMAGE_FILE)
    installed = {wheel_bundle.normalize(d.metadata["Name"]): d for d in metadata.distributions()}
    keep = {name for name in image if name in installed}
    todo = list(keep)
    while todo:
        for spec in installed[todo.pop()].requires or []:
            requirement = Requirement(spec)
            name = wheel_bundle.normalize(requirement.name)
            if name in installed and name not in keep and (
                    requirement.marker is None or requirement.marker.evaluate({"extra": ""})):
                keep.add(name)
                todo.append(name)
    venv.EnvBuilder(with_pip=False, symlinks=True).create(target)
    site = target / "image-site"
    site.mkdir()
    for name in keep:
        dist = installed[name]
        for top in {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            source = Path(dist.locate_file(top))
            if source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    python = f"python{sys.version_info.major}.{sys.version_info.minor}"
    (target / "lib" / python / "site-packages" / "image.pth").write_text(f"{site}\n")
    return target / "bin" / "python"


@pytest.mark.slow
def test_the_gpu_check_runs_offline_from_the_bundle(tmp_path):
    bundle = tmp_path / "bundle"
    built = subprocess.run([sys.executable, "scripts/wheel_bundle.py", str(bundle), "--stand-in"], cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    assert re.search(r"wheel_bundle: .*: \d+ wheels for Python 3\.\d+, .*MiB", built.stdout), built.stdout
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert {wheel_bundle.normalize(w["name"]) for w in manifest["wheels"]} >= {"ray", "optuna", "seqeval", "datasets"}
    assert gzip.decompress((bundle / "data/conll2003/train.txt.gz").read_bytes()) == (
        SHARED_DATA / "train.txt").read_bytes()

    python = stand_in_image(tmp_path / "image")
    lacks = subprocess.run([str(python), "-c", "import ray"], capture_output=True, text=True)
    assert lacks.returncode != 0 and "No module named 'ray'" in lacks.stderr  # the stand-in has no Ray

    report = tmp_path / "gpu_check.md"
    before = snapshot(ROOT / "results")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", GPU_CHECK_PYTHON=str(python), PIP_NO_INDEX="1")
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run", "--bundle", str(bundle), "--output",
                           str(report)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = report.read_text()
    assert text.startswith("# GPU check") and "CPU dry run" in text and "no GPU figure was measured" in text
    for step in ("install", "model", "teacher", "student", "probe"):
        assert re.search(rf"^\| {step} \| [0-9.]+ \| [0-9]+ \| ok \|", text, re.M), step
    for name in ("ray", "optuna", "seqeval", "datasets"):  # missing from the image, supplied by the bundle
        assert re.search(rf"^\| {name} \| [^|]+ \| missing \(does not fit\) \| [0-9][^|]* \|", text, re.M), name
    assert "Nothing missing." in text
    assert re.search(r"^best teacher: validation F1 [0-9.]+", text, re.M)
    assert re.search(r"^best student: validation F1 [0-9.]+", text, re.M)
    for batching in ("length", "random", "unpadded"):  # each batching's row: a positive real tokens/s
        row = re.search(rf"^\| {batching}\b[^|]* \| ([0-9,.]+) \|", text, re.M)
        assert row and float(row.group(1).replace(",", "")) > 0, batching
    assert snapshot(ROOT / "results") == before  # --output elsewhere: nothing lands in the checkout
