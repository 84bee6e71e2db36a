"""A corpus of real photographs for the tests, built from Debian packages.

No photograph is kept in git. On first use this module downloads two Debian packages
with ``apt-get download`` (about 60 MB together), unpacks them with ``dpkg-deb -x`` and
copies the photographs into a cache directory:

* ``lomiri-wallpapers-16.04`` (~16 MB): 15 camera photographs (Ubuntu wallpaper
  contest), 1.4-16 megapixels. A JPEG whose long side is at most :data:`MAX_SIDE` is
  copied as it is; larger ones are scaled down and re-saved as JPEG.
* ``gcompris-qt-data`` (~44 MB): the GCompris activities ``erase`` (33 animal
  photographs, 1920x1080), ``explore_monuments`` (49 photographs of monuments),
  ``explore_world_animals`` and ``explore_farm_animals``. They are lossy WebP images
  inside Qt resource (``.rcc``) bundles; each is decoded and re-saved as a JPEG
  (quality 90), as users mostly send JPEGs.

Only images at least :data:`MIN_SIDE` pixels on their short side are kept, which
leaves out the icons and drawings the bundles also hold (the activities above hold
photographs only). At most :data:`MAX_PHOTOS` files are written, in a deterministic
order, with deterministic names.

The cache is ``$MATCH_PHOTOS_CACHE`` or ``~/.cache/match-photos``. Building it is
idempotent and safe across processes (a file lock); once built, :func:`photo_dir`
only checks a marker file. It needs ``apt-get`` and ``dpkg-deb`` (Debian or Ubuntu) and
works as root without a terminal (CI); when ``apt-get download`` cannot find a package
and we are root, it runs ``apt-get update`` once and retries.

Command line: ``python -m tests.photos`` (or ``python tests/photos.py``) builds the
cache and prints the number of photos and the directory.
"""

from __future__ import annotations

import fcntl
import io
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

#: Debian packages the photos come from.
PACKAGES = ("lomiri-wallpapers-16.04", "gcompris-qt-data")
#: GCompris resource bundles that hold photographs only.
GCOMPRIS_BUNDLES = ("erase", "explore_monuments", "explore_world_animals", "explore_farm_animals")
#: Images whose short side is smaller than this are not photographs worth keeping.
MIN_SIDE = 480
#: Photographs whose long side is larger are scaled down to this long side.
MAX_SIDE = 2048
#: Upper bound on the corpus size.
MAX_PHOTOS = 120
#: JPEG quality of the files this module writes.
JPEG_QUALITY = 90

_MARKER = ".complete"
# A WebP file stored uncompressed in a Qt resource bundle: a big-endian 4-byte length
# prefix, then "RIFF", the little-endian RIFF payload length, "WEBP".
_WEBP = re.compile(rb"RIFF(....)WEBP", re.DOTALL)


def cache_root() -> Path:
    """The cache directory (``$MATCH_PHOTOS_CACHE`` or ``~/.cache/match-photos``)."""
    configured = os.environ.get("MATCH_PHOTOS_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "match-photos"


def photo_dir() -> Path:
    """The directory of photographs, built on first call (idempotent, process-safe)."""
    root = cache_root()
    photos_path = root / "photos"
    if (photos_path / _MARKER).exists():
        return photos_path
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (photos_path / _MARKER).exists():
            _build(root, photos_path)
    return photos_path


def photos(n: int | None = None) -> list[Path]:
    """The first ``n`` photographs of the corpus (all of them when ``n`` is None), sorted."""
    paths = sorted(p for p in photo_dir().iterdir() if p.suffix == ".jpg")
    if n is not None:
        if n > len(paths):
            raise ValueError(f"asked for {n} photos, the corpus has {len(paths)}")
        paths = paths[:n]
    return paths


def _build(root: Path, photos_path: Path) -> None:
    """Download, extract and write the corpus into ``photos_path`` atomically."""
    with tempfile.TemporaryDirectory(dir=root) as work_name:
        work = Path(work_name)
        debs = _download(work / "debs")
        tree = work / "tree"
        for deb in debs:
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
        staging = work / "photos"
        staging.mkdir()
        count = 0
        for name, image, jpeg_file in _images(tree):
            if count == MAX_PHOTOS:
                break
            _save(image, jpeg_file, staging / f"{name}.jpg")
            count += 1
        (staging / _MARKER).write_text(f"{count}\n")
        if photos_path.exists():
            shutil.rmtree(photos_path)
        staging.rename(photos_path)


def _download(dest: Path) -> list[Path]:
    """``apt-get download`` the packages into ``dest``; runs ``apt-get update`` if needed."""
    dest.mkdir(parents=True)
    # apt drops privileges to _apt for downloads; it cannot write into a private temp dir.
    command = ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", *PACKAGES]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    result = subprocess.run(command, cwd=dest, env=env, capture_output=True, text=True,
                            stdin=subprocess.DEVNULL)
    if result.returncode != 0 and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True, capture_output=True,
                       stdin=subprocess.DEVNULL)
        result = subprocess.run(command, cwd=dest, env=env, capture_output=True, text=True,
                                stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(command)}` failed:\n{result.stdout}{result.stderr}")
    return sorted(dest.glob("*.deb"))


def _images(tree: Path) -> Iterator[tuple[str, Image.Image, Path | None]]:
    """(name, image, its JPEG file if it is one) for every photograph in the unpacked
    packages, in a fixed order."""
    for path in sorted((tree / "usr/share/backgrounds").glob("*.jpg")):
        image = Image.open(path)
        if min(image.size) >= MIN_SIDE:
            yield f"lomiri-{path.stem}", image, path
    for bundle in GCOMPRIS_BUNDLES:
        data = (tree / "usr/share/gcompris-qt/rcc" / f"{bundle}.rcc").read_bytes()
        for index, blob in enumerate(_webp_blobs(data)):
            image = Image.open(io.BytesIO(blob))
            if min(image.size) >= MIN_SIDE:
                yield f"gcompris-{bundle}-{index:03d}", image, None


def _webp_blobs(data: bytes) -> Iterator[bytes]:
    """The WebP files stored (uncompressed) in a Qt resource bundle."""
    for found in _WEBP.finditer(data):
        start = found.start()
        if start < 4:
            continue
        (stored_length,) = struct.unpack(">I", data[start - 4:start])
        (riff_length,) = struct.unpack("<I", found.group(1))
        if stored_length == riff_length + 8:
            yield data[start:start + stored_length]


def _save(image: Image.Image, jpeg_file: Path | None, path: Path) -> None:
    """Write ``image`` as a JPEG: a small enough JPEG file is copied byte for byte,
    anything else is scaled down to a long side of at most MAX_SIDE and encoded."""
    if jpeg_file is not None and max(image.size) <= MAX_SIDE:
        shutil.copyfile(jpeg_file, path)
        return
    image = image.convert("RGB")
    if max(image.size) > MAX_SIDE:
        scale = MAX_SIDE / max(image.size)
        size = (round(image.width * scale), round(image.height * scale))
        image = image.resize(size, Image.Resampling.LANCZOS)
    image.save(path, "JPEG", quality=JPEG_QUALITY)


def main() -> int:
    """Build the corpus and print its size and location."""
    directory = photo_dir()
    print(f"{len(photos())} photos in {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
