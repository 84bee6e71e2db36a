"""Visual words: a vocabulary tree over ORB descriptors, built once, shipped as a file.

A visual word is a leaf of a tree of binary centres (Nister and Stewenius, "Scalable
recognition with a vocabulary tree", CVPR 2006): a descriptor walks down
:data:`DEPTH` levels, at each one taking the nearest (Hamming) of
:data:`BRANCHING` children, and the leaf it reaches is its word, an integer in
``[0, BRANCHING ** DEPTH)`` (65,536 words). Binary descriptors are clustered with
k-majority (the centre of a cluster is the bitwise majority of its members), as
DBoW2 and pastec do for ORB.

The tree is built by a documented command, deterministically (a fixed seed and a fixed
number of rounds; the same photos give the same file, byte for byte)::

    python -m match.vocabulary build [--photos DIR] [--out match/data/vocabulary.npz]

By default from the photographs of ``tests/photos.py`` (Debian's
``lomiri-wallpapers-16.04`` and ``gcompris-qt-data``; not the benchmark's photos), at
three scales each. The result (about 2.2 MB) is shipped in the package
(``match/data/vocabulary.npz``) and loaded once per process; nothing is downloaded at
run time. Changing the file changes every word: an index built with one vocabulary
must be reindexed (``match reindex``) to be searched with another, so the file's
digest is recorded (:attr:`Vocabulary.digest`).

No I/O besides reading that one file in :func:`load`.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Vocabulary", "BRANCHING", "DEPTH", "WORDS", "load", "build"]

#: Children of every node.
BRANCHING = 16
#: Levels below the root; words are the leaves.
DEPTH = 4
#: Number of words.
WORDS = BRANCHING**DEPTH

_ROUNDS = 8  # k-majority rounds per node
_SEED = 20070617  # Philbin et al.'s CVPR 2007


class Vocabulary:
    """A vocabulary tree: ``levels[l]`` holds the uint8 ``(BRANCHING ** (l + 1), 32)`` centres.

    The children of node ``i`` of level ``l - 1`` are rows ``i * BRANCHING ..
    (i + 1) * BRANCHING - 1`` of level ``l``.

    >>> vocabulary = load()                           # doctest: +SKIP
    >>> vocabulary.words(features.descriptors)        # doctest: +SKIP
    array([40211, 1733, ...], dtype=int32)
    """

    def __init__(self, levels: list[npt.NDArray[np.uint8]]) -> None:
        if len(levels) != DEPTH or any(level.shape != (BRANCHING ** (i + 1), 32)
                                       for i, level in enumerate(levels)):
            raise ValueError("not a vocabulary tree of this shape")
        self.levels = levels
        self._wide = [np.ascontiguousarray(level).view(np.uint64) for level in levels]
        digest = hashlib.sha256()
        for level in levels:
            digest.update(level.tobytes())
        #: SHA-256 of the centres: which vocabulary an index was built with.
        self.digest = digest.hexdigest()

    def words(self, descriptors: npt.NDArray[np.uint8]) -> npt.NDArray[np.int32]:
        """The word of each descriptor: int32 ``(n,)`` in ``[0, WORDS)``."""
        n = descriptors.shape[0]
        # 256 bits as four uint64 words: XOR and popcount four at a time.
        bits = np.ascontiguousarray(descriptors, dtype=np.uint8).view(np.uint64)  # (n, 4)
        node = np.zeros(n, dtype=np.int64)
        for level in self._wide:
            children = node[:, np.newaxis] * BRANCHING + np.arange(BRANCHING)  # (n, B)
            distances = np.bitwise_count(level[children] ^ bits[:, np.newaxis, :]).sum(axis=2)
            node = children[np.arange(n), distances.argmin(axis=1)]
        return node.astype(np.int32)


@functools.cache
def load() -> Vocabulary:
    """The shipped vocabulary (read once per process)."""
    source = resources.files("match") / "data" / "vocabulary.npz"
    with source.open("rb") as handle, np.load(handle) as data:
        return Vocabulary([np.ascontiguousarray(data[f"level{i}"], dtype=np.uint8) for i in range(DEPTH)])


def build(descriptors: npt.NDArray[np.uint8], *, seed: int = _SEED) -> Vocabulary:
    """Build a tree from uint8 ``(n, 32)`` descriptors by recursive k-majority."""
    rng = np.random.default_rng(seed)
    bits = np.unpackbits(descriptors, axis=1).astype(np.float32)
    levels: list[npt.NDArray[np.uint8]] = []
    groups = [np.arange(len(bits))]
    for _ in range(DEPTH):
        centres = np.zeros((len(groups) * BRANCHING, 32), dtype=np.uint8)
        next_groups: list[npt.NDArray[np.intp]] = []
        for index, members in enumerate(groups):
            centre_bits, assignment = _k_majority(bits[members], rng)
            centres[index * BRANCHING:(index + 1) * BRANCHING] = np.packbits(centre_bits, axis=1)
            next_groups.extend(members[assignment == child] for child in range(BRANCHING))
        levels.append(centres)
        groups = next_groups
    return Vocabulary(levels)


def _k_majority(bits: npt.NDArray[np.float32],
                rng: np.random.Generator) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.intp]]:
    """BRANCHING binary centres of ``bits`` (n, 256) and each row's centre."""
    n = len(bits)
    if n == 0:
        return np.zeros((BRANCHING, 256), np.uint8), np.zeros(0, np.intp)
    # k-means++ seeding on Hamming distance, then rounds of assign / bitwise majority.
    chosen = [int(rng.integers(n))]
    nearest = _hamming(bits, bits[chosen])[:, 0]
    while len(chosen) < BRANCHING:
        total = float(nearest.sum())
        pick = int(rng.integers(n)) if total == 0 else int(rng.choice(n, p=nearest / total))
        chosen.append(pick)
        nearest = np.minimum(nearest, _hamming(bits, bits[[pick]])[:, 0])
    centres = bits[chosen].copy()
    assignment = np.zeros(n, np.intp)
    for _ in range(_ROUNDS):
        assignment = _hamming(bits, centres).argmin(axis=1)
        for child in range(BRANCHING):
            members = bits[assignment == child]
            if len(members):
                centres[child] = (members.mean(axis=0) >= 0.5).astype(np.float32)
    assignment = _hamming(bits, centres).argmin(axis=1)
    return centres.astype(np.uint8), assignment


def _hamming(bits: npt.NDArray[np.float32], centres: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Hamming distances between 0/1 rows, (n, 256) x (k, 256) -> (n, k), by one matmul."""
    result: npt.NDArray[np.float32] = (bits.sum(axis=1)[:, np.newaxis] + centres.sum(axis=1)[np.newaxis, :]
                                       - 2.0 * bits @ centres.T)
    return result


def training_descriptors(photos: list[Path]) -> npt.NDArray[np.uint8]:
    """ORB descriptors of each photo at three scales (1, 0.7, 0.5), in file order."""
    from PIL import Image

    from match import features

    chunks = []
    for path in photos:
        with Image.open(path) as opened:
            rgb = np.asarray(opened.convert("RGB"))
        for scale in (1.0, 0.7, 0.5):
            side = max(64, round(features.DETECT_SIDE * scale))
            found = features.extract(rgb, keypoints=1000, side=side)
            chunks.append(found.descriptors)
    return np.concatenate(chunks)


def main(argv: list[str] | None = None) -> int:
    """``python -m match.vocabulary build``: see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m match.vocabulary")
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="build the vocabulary tree from photographs")
    build_parser.add_argument("--photos", type=Path, help="directory of JPEG photographs "
                              "(default: the tests' photo corpus, tests/photos.py)")
    build_parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data" / "vocabulary.npz")
    args = parser.parse_args(argv)
    if args.photos is None:
        from tests.photos import photos

        paths = sorted(photos())
    else:
        paths = sorted(args.photos.glob("*.jpg"))
    descriptors = training_descriptors(paths)
    print(f"{len(paths)} photos, {len(descriptors)} descriptors", file=sys.stderr)
    vocabulary = build(descriptors)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "wb") as handle:
        levels: dict[str, Any] = {f"level{i}": level for i, level in enumerate(vocabulary.levels)}
        np.savez_compressed(handle, **levels)
    print(f"wrote {args.out} (sha256 of centres {vocabulary.digest[:16]})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
