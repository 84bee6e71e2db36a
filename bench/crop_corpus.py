"""The photo corpus of the crop benchmark (bench/crop_quality.py, issue 10).

Real photographs from Debian packages, none of them the tests' photos (tests/photos.py
takes ``lomiri-wallpapers-16.04`` and the GCompris bundles ``erase``,
``explore_monuments``, ``explore_world_animals`` and ``explore_farm_animals``; this
corpus takes neither). On first use it runs ``apt-get download`` for the packages of
:data:`SOURCES` (465 MB of .deb files, half of it ``stellarium-data``), unpacks
them with ``dpkg-deb -x`` in a temporary directory, and writes each chosen photograph
as a JPEG (quality 90) scaled to a long side of at most :data:`LONG_SIDE`, under
``$MATCH_BENCH_CROP_CACHE`` or ``~/.cache/match-bench-crop/photos``, with a
``manifest.json`` (name, group, package, source file). Names are
``<group>--<stem>.jpg``; the order is the sorted order of the names. The .deb files are
removed once the photos are written.

Photographs only. Each source is an *allow-list*: the files or WebP blobs of a package
that are camera photographs, picked by looking at every candidate once (the desktop
wallpaper packages mix photographs with renders and vector art, the GCompris bundles mix
photographs with paintings and drawings). On top of it an automatic guard,
:func:`looks_like_a_photo`, refuses images with large exactly-flat areas or few
distinct colours (what renders, drawings and vector art have), so a changed package
cannot bring a drawing in silently; the command line prints what it refused.

Groups. Every photo belongs to one *group*: a package and a series or place within
it (the MATE "nature" wallpapers, the Plasma photo wallpapers, the GCompris
monuments of ``details``, one astrophotographer's series of Stellarium, ...). The
benchmark's negatives are distinct photos of the same groups, never indexed: the
hard case of look-alikes (wallpapers of one series, photos of one place or subject).

Command line: ``python -m bench.crop_corpus`` builds the cache and prints the counts
per group.
"""

from __future__ import annotations

import argparse
import fcntl
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

#: Long side of the stored photos (larger ones are scaled down).
LONG_SIDE = 1024
#: Images whose short side is smaller are not used.
MIN_SIDE = 300
JPEG_QUALITY = 90
#: :func:`looks_like_a_photo` refuses images with a larger flat share.
MAX_FLAT = 0.55
_MARKER = ".complete"
_WEBP = re.compile(rb"RIFF(....)WEBP", re.DOTALL)


@dataclass(frozen=True)
class Source:
    """One group of photographs: a package and the files (globs under the unpacked
    tree) or the WebP blobs of a GCompris resource bundle that are photographs."""

    group: str
    package: str
    globs: tuple[str, ...] = ()
    bundle: str = ""
    blobs: tuple[int, ...] = ()
    #: Stems of matched files to leave out (renders, near-duplicates).
    exclude: tuple[str, ...] = ()
    #: At most this many (sorted by name), 0 for all.
    limit: int = 0


_PLASMA_PHOTOS = ("BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf",
                  "Grey", "Kite", "MilkyWay", "OneStandsOut", "Path", "Volna", "summer_1am")

#: The corpus: (group, package, which files). See the module docstring.
SOURCES: tuple[Source, ...] = (
    Source("mate-nature", "mate-backgrounds", ("usr/share/backgrounds/mate/nature/*.jpg",)),
    # One file per wallpaper: the largest of contents/images (the others are the same photo).
    Source("plasma-photos", "plasma-workspace-wallpapers",
           tuple(f"usr/share/wallpapers/{name}/contents/images/*" for name in _PLASMA_PHOTOS)),
    Source("lomiri-2004", "lomiri-wallpapers-20.04",
           ("usr/share/backgrounds/Infinite-Sea_by_Aury88.jpg",
            "usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg")),
    Source("palapeli", "palapeli-data", ("usr/share/palapeli/collection/*.jpg",)),
    Source("skimage", "python3-skimage",
           tuple(f"usr/lib/python3/dist-packages/skimage/data/{name}"
                 for name in ("astronaut.png", "camera.png", "chelsea.png", "coffee.png",
                              "motorcycle_left.png", "rocket.jpg", "retina.jpg"))),
    Source("skimage-textures", "python3-skimage",
           tuple(f"usr/lib/python3/dist-packages/skimage/data/{name}.png"
                 for name in ("brick", "grass", "gravel"))),
    Source("gcompris-details-monuments", "gcompris-qt-data", bundle="details",
           blobs=(10, 28, 37, 44, 48, 67, 74, 80, 83, 93, 103, 116, 122)),
    Source("gcompris-world-music", "gcompris-qt-data", bundle="explore_world_music",
           blobs=(0, 1, 2, 3, 4, 5, 6, 7, 8)),
    Source("gcompris-clickgame-sea", "gcompris-qt-data", bundle="clickgame", blobs=(2, 5, 11, 12, 23, 29)),
    Source("gcompris-categorization-objects", "gcompris-qt-data", bundle="categorization",
           blobs=(28, 56, 67, 68, 93, 97, 124, 131, 133, 136, 137)),
    # Astrophotographs, two series: one amateur astronomer's (Vasey), and the Digitized Sky Survey.
    Source("stellarium-vasey", "stellarium-data", ("usr/share/stellarium/nebulae/default/*-vasey.png",)),
    Source("stellarium-dss", "stellarium-data", ("usr/share/stellarium/nebulae/default/*-dss.png",)),
)


def cache_root() -> Path:
    """``$MATCH_BENCH_CROP_CACHE`` or ``~/.cache/match-bench-crop``."""
    configured = os.environ.get("MATCH_BENCH_CROP_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "match-bench-crop"


@dataclass(frozen=True)
class Photo:
    """One photo of the corpus: its file, name (``<group>--<stem>``) and group."""

    path: Path
    name: str
    group: str
    package: str


def photo_dir() -> Path:
    """The directory of the corpus, built on first call (idempotent, process-safe)."""
    root = cache_root()
    target = root / "photos"
    if (target / _MARKER).exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / _MARKER).exists():
            _build(root, target)
    return target


def photos() -> list[Photo]:
    """Every photo of the corpus, sorted by name."""
    directory = photo_dir()
    manifest = json.loads((directory / "manifest.json").read_text())
    return [Photo(directory / f"{entry['name']}.jpg", entry["name"], entry["group"], entry["package"])
            for entry in sorted(manifest, key=lambda e: e["name"])]


def looks_like_a_photo(picture: Image.Image) -> tuple[bool, float]:
    """(is it a photograph, flat share): a coarse guard against flat-fill art.

    On the image scaled to 256 pixels (long side), the *flat share* is the share of
    the mid-tone pixels (brightest channel above 24 and darkest below 232, so the black
    sky of astrophotographs and the white backdrop of product shots do not count) that
    equal, in all three channels, both their right and lower neighbours. Camera
    photographs have sensor and JPEG noise: on this corpus's photos it is at most 0.45,
    mostly below 0.1. Vector art and flat-fill drawings reach 0.6-0.96; refused above
    :data:`MAX_FLAT`. Smooth renders (gradients, blurred shapes) are not caught by any
    colour statistic we tried (they look like out-of-focus photos), which is why the
    allow-lists, not this guard, select the photographs.
    """
    small = picture.convert("RGB")
    small.thumbnail((256, 256), Image.Resampling.BILINEAR)
    pixels = np.asarray(small, dtype=np.int16)
    same_right = (pixels[:-1, :-1] == pixels[:-1, 1:]).all(axis=2)
    same_down = (pixels[:-1, :-1] == pixels[1:, :-1]).all(axis=2)
    core = pixels[:-1, :-1]
    mid = (core.max(axis=2) > 24) & (core.min(axis=2) < 232)
    flat = float((same_right & same_down & mid).sum() / max(1, int(mid.sum())))
    return flat <= MAX_FLAT, flat


def _build(root: Path, target: Path) -> None:
    with tempfile.TemporaryDirectory(dir=root) as work_name:
        work = Path(work_name)
        debs = _download(work / "debs", sorted({source.package for source in SOURCES}))
        tree = work / "tree"
        for deb in debs:
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
            deb.unlink()
        staging = work / "photos"
        staging.mkdir()
        manifest = []
        refused = []
        for source, stem, origin, picture in _candidates(tree):
            name = f"{source.group}--{stem}"
            if min(picture.size) < MIN_SIDE:
                refused.append(f"{name}: short side {min(picture.size)} < {MIN_SIDE}")
                continue
            is_photo, flat = looks_like_a_photo(picture)
            if not is_photo:
                refused.append(f"{name}: flat share {flat:.2f}")
                continue
            _save(picture, staging / f"{name}.jpg")
            manifest.append({"name": name, "group": source.group, "package": source.package,
                             "source": origin})
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        (staging / "refused.txt").write_text("".join(f"{line}\n" for line in refused))
        (staging / _MARKER).write_text(f"{len(manifest)}\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)


def _download(dest: Path, packages: list[str]) -> list[Path]:
    """``apt-get download`` the packages into ``dest``; runs ``apt-get update`` if needed."""
    dest.mkdir(parents=True)
    command = ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", *packages]
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


def _candidates(tree: Path) -> Iterator[tuple[Source, str, str, Image.Image]]:
    """(source, stem, where it came from, image) for every allow-listed image."""
    for source in SOURCES:
        found: list[tuple[str, str, Image.Image]] = []
        for pattern in source.globs:
            matches = sorted(tree.glob(pattern))
            if "/contents/images/" in pattern:  # a Plasma wallpaper: its largest size only
                matches = sorted(matches, key=lambda p: -_pixels(p))[:1]
            for path in matches:
                stem = path.parts[-4] if "/contents/images/" in pattern else path.stem
                if stem in source.exclude:
                    continue
                found.append((stem, str(path.relative_to(tree)), Image.open(path)))
        if source.bundle:
            data = (tree / "usr/share/gcompris-qt/rcc" / f"{source.bundle}.rcc").read_bytes()
            blobs = dict(enumerate(_webp_blobs(data)))
            for index in source.blobs:
                found.append((f"{index:03d}", f"{source.bundle}.rcc#webp{index}",
                              Image.open(io.BytesIO(blobs[index]))))
        found.sort(key=lambda item: item[0])
        if source.limit:
            found = found[:source.limit]
        for stem, origin, picture in found:
            yield source, stem, origin, picture


def _pixels(path: Path) -> int:
    with Image.open(path) as picture:
        return picture.width * picture.height


def _webp_blobs(data: bytes) -> Iterator[bytes]:
    """The WebP files stored (uncompressed) in a Qt resource bundle (as tests/photos.py)."""
    for found in _WEBP.finditer(data):
        start = found.start()
        if start < 4:
            continue
        (stored_length,) = struct.unpack(">I", data[start - 4:start])
        (riff_length,) = struct.unpack("<I", found.group(1))
        if stored_length == riff_length + 8:
            yield data[start:start + stored_length]


def _save(picture: Image.Image, path: Path) -> None:
    if picture.mode in ("RGBA", "LA", "PA") or (picture.mode == "P" and "transparency" in picture.info):
        picture = picture.convert("RGBA")
        flat = Image.new("RGB", picture.size, (0, 0, 0))
        flat.paste(picture, mask=picture.getchannel("A"))
        picture = flat
    picture = picture.convert("RGB")
    if max(picture.size) > LONG_SIDE:
        scale = LONG_SIDE / max(picture.size)
        picture = picture.resize((round(picture.width * scale), round(picture.height * scale)),
                                 Image.Resampling.LANCZOS)
    picture.save(path, "JPEG", quality=JPEG_QUALITY)


def main(argv: list[str] | None = None) -> int:
    """Build the corpus and print the photos per group."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.parse_args(argv)
    corpus = photos()
    counts = Counter(photo.group for photo in corpus)
    packages = {photo.group: photo.package for photo in corpus}
    for group, number in sorted(counts.items()):
        print(f"{number:4d}  {group}  ({packages[group]})")
    print(f"{len(corpus)} photos in {len(counts)} groups, in {photo_dir()}")
    refused = (photo_dir() / "refused.txt").read_text().splitlines()
    if refused:
        print(f"refused ({len(refused)}): " + "; ".join(refused))
    return 0


if __name__ == "__main__":
    sys.exit(main())
