"""The store contract, run on every backend (``local`` and ``elasticsearch``).

Each test gets a fresh store from the ``store`` / ``make_store`` fixtures in
tests/conftest.py, parametrized over the backends, so one suite pins down what
:mod:`match.store.base` promises (ThreatExchange's ``SignalTypeAutoTest`` does the same
for signal types). Signatures are synthetic int8 vectors with values in -2..2, as
Goldberg signatures have; expected distances come from :func:`match.signature.distances`,
the one distance every backend reranks with. Nothing here waits or retries: a record
must be visible as soon as ``upsert`` returns.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from match import signature as sig
from match.features import Features
from match.store import Match, Record, SignatureStore

MakeStore = Callable[..., SignatureStore]


def random_signature(seed: int) -> np.ndarray:
    """A reproducible int8 (648,) signature with values in -2..2."""
    return np.random.default_rng(seed).integers(-2, 3, sig.SIGNATURE_LENGTH).astype(np.int8)


def variant(base: np.ndarray, changes: int, seed: int = 0) -> np.ndarray:
    """``base`` with ``changes`` entries negated (nonzero ones, in a seeded order).

    The distance to ``base`` grows with ``changes``: a near duplicate for a few, past the
    default cutoff for a quarter or so of the entries.
    """
    order = np.random.default_rng(seed).permutation(np.flatnonzero(base))
    changed = base.copy()
    changed[order[:changes]] *= -1
    return changed


def distance(a: np.ndarray, b: np.ndarray) -> float:
    """The one distance, as the stores compute it."""
    return float(sig.distances(a, b[np.newaxis, :])[0])


def around_cutoff(base: np.ndarray, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """Two variants of ``base``: the farthest within ``cutoff`` and the nearest beyond it."""
    for changes in range(1, int(np.count_nonzero(base))):
        if distance(base, variant(base, changes)) > cutoff:
            inside, outside = variant(base, changes - 1), variant(base, changes)
            assert distance(base, inside) <= cutoff < distance(base, outside)
            return inside, outside
    raise AssertionError("no variant crosses the cutoff")


def paths(matches: list[Match]) -> list[str]:
    return [match.filepath for match in matches]


# --- add, get, overwrite, delete ------------------------------------------------------


def test_empty_store(store: SignatureStore) -> None:
    assert store.count() == 0
    assert store.list() == []
    assert store.get("nothing.jpg") is None
    assert store.search(random_signature(1)) == []
    assert store.delete("nothing.jpg") is False
    store.check()


def test_upsert_then_get_and_search(store: SignatureStore) -> None:
    signature = random_signature(1)
    store.upsert(Record("cats/tabby.jpg", signature, {"id": 7}, sha256="ab" * 32, added_at=1_700_000_000.5))

    record = store.get("cats/tabby.jpg")
    assert record is not None
    assert record.filepath == "cats/tabby.jpg"
    assert record.signature.dtype == np.int8 and np.array_equal(record.signature, signature)
    assert record.metadata == {"id": 7}
    assert record.sha256 == "ab" * 32
    assert record.added_at == pytest.approx(1_700_000_000.5, abs=1e-3)

    [hit] = store.search(signature)
    assert hit.filepath == "cats/tabby.jpg"
    assert hit.distance == pytest.approx(0.0, abs=1e-9)
    assert hit.metadata == {"id": 7}
    assert store.count() == 1


def test_added_at_is_set_when_missing(store: SignatureStore) -> None:
    store.upsert(Record("a.jpg", random_signature(1)))
    record = store.get("a.jpg")
    assert record is not None and isinstance(record.added_at, float) and record.added_at > 1_600_000_000
    assert record.metadata == {} and record.sha256 is None


def test_visible_as_soon_as_upsert_returns(store: SignatureStore) -> None:
    for i in range(5):
        signature = random_signature(100 + i)
        store.upsert(Record(f"img{i}.jpg", signature, {"i": i}))
        assert store.count() == i + 1
        assert store.get(f"img{i}.jpg") is not None
        assert paths(store.search(signature, size=1)) == [f"img{i}.jpg"]
        assert f"img{i}.jpg" in store.list(limit=10)


def test_overwrite_replaces(store: SignatureStore) -> None:
    first, second = random_signature(1), random_signature(2)
    assert distance(first, second) > 0.45
    store.upsert(Record("same.jpg", first, {"version": 1, "old": True}))
    store.upsert(Record("same.jpg", second, {"version": 2}))

    assert store.count() == 1
    record = store.get("same.jpg")
    assert record is not None
    assert np.array_equal(record.signature, second)
    assert record.metadata == {"version": 2}
    [hit] = store.search(second)
    assert hit.distance == pytest.approx(0.0, abs=1e-9) and hit.metadata == {"version": 2}
    assert store.search(first) == []  # the old signature is gone from the index too


def test_delete(store: SignatureStore) -> None:
    signature = random_signature(1)
    store.upsert(Record("gone.jpg", signature))
    store.upsert(Record("kept.jpg", random_signature(2)))

    assert store.delete("gone.jpg") is True
    assert store.delete("gone.jpg") is False
    assert store.get("gone.jpg") is None
    assert store.count() == 1
    assert store.list() == ["kept.jpg"]
    assert store.search(signature) == []


def test_delete_then_add_again(store: SignatureStore) -> None:
    signature = random_signature(1)
    store.upsert(Record("back.jpg", signature, {"n": 1}))
    assert store.delete("back.jpg")
    store.upsert(Record("back.jpg", signature, {"n": 2}))
    [hit] = store.search(signature)
    assert (hit.filepath, hit.metadata) == ("back.jpg", {"n": 2})
    assert store.count() == 1


def test_upsert_many(store: SignatureStore) -> None:
    records = [Record(f"bulk/{i:03d}.jpg", random_signature(i), {"i": i}) for i in range(30)]
    # A filepath twice in one batch: the last one wins, as if upserted in order.
    records.append(Record("bulk/005.jpg", random_signature(999), {"i": "last"}))
    assert store.upsert_many(records) == 30
    assert store.upsert_many([]) == 0
    assert store.count() == 30
    record = store.get("bulk/005.jpg")
    assert record is not None and record.metadata == {"i": "last"}
    assert np.array_equal(record.signature, random_signature(999))
    for i in (0, 17, 29):
        assert paths(store.search(random_signature(i), size=1)) == [f"bulk/{i:03d}.jpg"]


# --- search ---------------------------------------------------------------------------


def test_search_orientations_one_entry_per_filepath(store: SignatureStore) -> None:
    base, other = random_signature(1), random_signature(2)
    store.upsert(Record("base.jpg", variant(base, 5), {"name": "base"}))
    store.upsert(Record("other.jpg", other, {"name": "other"}))
    store.upsert(Record("unrelated.jpg", random_signature(3)))

    # Eight "orientations": several are near base.jpg, one is near other.jpg.
    queries = np.stack([variant(base, 40, seed=1), base, variant(base, 20, seed=2), variant(other, 30),
                        random_signature(10), random_signature(11), variant(base, 60, seed=3),
                        random_signature(12)])
    hits = store.search(queries)

    assert paths(hits) == ["base.jpg", "other.jpg"]
    stored = {"base.jpg": variant(base, 5), "other.jpg": other}
    for hit in hits:
        expected = min(distance(query, stored[hit.filepath]) for query in queries)
        assert hit.distance == pytest.approx(expected, abs=1e-6)
    assert hits[0].metadata == {"name": "base"}
    # A list of arrays is accepted as well as a (k, 648) array.
    assert store.search(list(queries)) == hits


def test_cutoff_honoured(store: SignatureStore) -> None:
    base = random_signature(1)
    inside, outside = around_cutoff(base, sig.DEFAULT_CUTOFF)
    store.upsert(Record("inside.jpg", inside))
    store.upsert(Record("outside.jpg", outside))

    [hit] = store.search(base)
    assert hit.filepath == "inside.jpg"
    assert hit.distance == pytest.approx(distance(base, inside), abs=1e-6)
    assert hit.distance <= sig.DEFAULT_CUTOFF

    # An explicit cutoff just past the outside one's distance takes it in, nearest first.
    wider = distance(base, outside) + 1e-4
    assert paths(store.search(base, cutoff=wider)) == ["inside.jpg", "outside.jpg"]
    # A cutoff just below the inside one's distance leaves nothing.
    assert store.search(base, cutoff=distance(base, inside) - 1e-4) == []
    assert paths(store.search(base, cutoff=1.0)) == ["inside.jpg", "outside.jpg"]


def test_cutoff_zero_finds_only_exact(store: SignatureStore) -> None:
    base = random_signature(1)
    store.upsert(Record("exact.jpg", base))
    store.upsert(Record("near.jpg", variant(base, 1)))
    assert paths(store.search(base, cutoff=0.0)) == ["exact.jpg"]


def test_size_and_order(store: SignatureStore) -> None:
    base = random_signature(1)
    # changes -> filepath, inserted in a scrambled order; distance grows with changes.
    changes = [12, 3, 30, 0, 21, 6, 45, 9, 15, 18, 27, 24, 36, 33, 39, 42, 48, 51, 54, 57]
    store.upsert_many([Record(f"near-{n:02d}.jpg", variant(base, n)) for n in changes])
    expected = [f"near-{n:02d}.jpg" for n in sorted(changes)]

    everything = store.search(base, size=100)
    assert paths(everything) == expected
    assert [hit.distance for hit in everything] == sorted(hit.distance for hit in everything)
    assert paths(store.search(base, size=5)) == expected[:5]
    assert paths(store.search(base, size=1)) == expected[:1]


def test_ties_are_broken_by_filepath(store: SignatureStore) -> None:
    base = random_signature(1)
    twin = variant(base, 10)
    for name in ("m.jpg", "b.jpg", "z.jpg", "a.jpg"):
        store.upsert(Record(name, twin))
    store.upsert(Record("closest.jpg", variant(base, 2)))

    hits = store.search(base)
    assert paths(hits) == ["closest.jpg", "a.jpg", "b.jpg", "m.jpg", "z.jpg"]
    assert len({hit.distance for hit in hits[1:]}) == 1
    assert paths(store.search(base, size=3)) == ["closest.jpg", "a.jpg", "b.jpg"]


def test_search_many_records_finds_the_near_ones(store: SignatureStore) -> None:
    store.upsert_many([Record(f"noise/{i:03d}.jpg", random_signature(1000 + i)) for i in range(200)])
    base = random_signature(1)
    store.upsert(Record("target.jpg", variant(base, 15)))
    hits = store.search(np.stack([random_signature(5), base]))
    assert paths(hits) == ["target.jpg"]


# --- list and count -------------------------------------------------------------------


def test_list_order_and_paging(store: SignatureStore) -> None:
    names = [f"dir{i % 3}/img-{i:02d}.jpg" for i in range(44)]
    # Binary (code point) order: upper case before lower case, non-ASCII last.
    names += ["Zebra.jpg", "apple.jpg", "élan.jpg", "日本/写真.jpg", "a b/c d.jpg", "0.jpg"]
    shuffled = list(np.random.default_rng(7).permutation(names))
    store.upsert_many([Record(name, random_signature(i)) for i, name in enumerate(shuffled)])

    assert store.count() == 50
    expected = sorted(names)
    assert store.list(0, 50) == expected
    assert store.list(0, 1000) == expected
    assert store.list() == expected[:20]
    pages = [store.list(offset, 7) for offset in range(0, 50, 7)]
    assert [len(page) for page in pages] == [7] * 7 + [1]
    assert [name for page in pages for name in page] == expected
    assert store.list(49, 10) == expected[49:]
    assert store.list(50, 10) == []
    assert store.list(500, 10) == []


# --- metadata -------------------------------------------------------------------------

NESTED: dict[str, Any] = {
    "title": "Château d'Eau — 東京 🌸",
    "nested": {"deeper": {"list": [1, 2.5, "three", None, True, {"x": []}], "empty": {}}},
    "key.with.dots": "dots",
    "key with spaces": "spaces",
    "a": 1,
    "a.b": {"c": "a is also a value: a path-expanding mapping would conflict"},
    "": "empty key",
    "mixed": [1, "x", [2, [3]], {"y": None}],
    "big": 2**53,
    "negative": -12.75,
    "false": False,
    "null": None,
}


def test_metadata_round_trips(store: SignatureStore) -> None:
    signature = random_signature(1)
    store.upsert(Record("meta.jpg", signature, NESTED))
    record = store.get("meta.jpg")
    assert record is not None and record.metadata == NESTED
    [hit] = store.search(signature)
    assert hit.metadata == NESTED


def test_metadata_types_may_differ_between_records(store: SignatureStore) -> None:
    # The same key holds a number, a string, an object and a list in different records:
    # a dynamic mapping would reject all but the first.
    values: list[Any] = [1, "one", {"one": 1}, [1, "one"], None, 1.5]
    store.upsert_many([Record(f"{i}.jpg", random_signature(i), {"value": value, "value.x": i})
                       for i, value in enumerate(values)])
    assert store.count() == len(values)
    for i, value in enumerate(values):
        record = store.get(f"{i}.jpg")
        assert record is not None and record.metadata == {"value": value, "value.x": i}


# --- validation (from the base, on every backend) ------------------------------------


@pytest.mark.parametrize("signature", [
    np.zeros(647, dtype=np.int8),
    np.zeros((2, 648), dtype=np.int8),
    np.zeros(648, dtype=np.float32),
    np.zeros(648, dtype=np.int64),
    [0] * 648,
], ids=["short", "2d", "float32", "int64", "list"])
def test_bad_signature_is_refused(store: SignatureStore, signature: Any) -> None:
    with pytest.raises(ValueError, match="signature"):
        store.upsert(Record("bad.jpg", signature))
    with pytest.raises(ValueError, match="signature"):
        store.upsert_many([Record("good.jpg", random_signature(1)), Record("bad.jpg", signature)])
    assert store.count() == 0  # nothing of a batch with a bad record was written


@pytest.mark.parametrize("filepath", ["", "x" * 1025, "nul\x00.jpg"], ids=["empty", "long", "nul"])
def test_bad_filepath_is_refused(store: SignatureStore, filepath: str) -> None:
    with pytest.raises(ValueError, match="filepath"):
        store.upsert(Record(filepath, random_signature(1)))
    with pytest.raises(ValueError, match="filepath"):
        store.get(filepath)
    with pytest.raises(ValueError, match="filepath"):
        store.delete(filepath)


def test_bad_arguments_are_refused(store: SignatureStore) -> None:
    with pytest.raises(ValueError, match="metadata"):
        store.upsert(Record("a.jpg", random_signature(1), {"nan": float("nan")}))
    with pytest.raises(ValueError, match="metadata"):
        store.upsert(Record("a.jpg", random_signature(1), {"set": {1, 2}}))
    with pytest.raises(ValueError, match="offset"):
        store.list(offset=-1)
    with pytest.raises(ValueError, match="limit"):
        store.list(limit=0)
    with pytest.raises(ValueError, match="query"):
        store.search(np.zeros((8, 100), dtype=np.int8))
    with pytest.raises(ValueError, match="query"):
        store.search(np.zeros((0, 648), dtype=np.int8))
    with pytest.raises(ValueError, match="size"):
        store.search(random_signature(1), size=0)
    with pytest.raises(ValueError, match="cutoff"):
        store.search(random_signature(1), cutoff=1.5)
    assert store.count() == 0


# --- restart --------------------------------------------------------------------------


def test_a_new_store_on_the_same_settings_sees_the_data(make_store: MakeStore) -> None:
    # One index name for both instances (the local store shares the test's data dir).
    index = f"match-test-{uuid.uuid4().hex[:12]}"
    first = make_store(MATCH_INDEX=index)
    first.upsert_many([Record(f"{i}.jpg", random_signature(i), {"i": i}) for i in range(10)])
    first.delete("3.jpg")
    first.upsert(Record("5.jpg", random_signature(55), {"i": "five"}))
    first.close()

    second = make_store(MATCH_INDEX=index)
    assert second.count() == 9
    assert second.list() == sorted(f"{i}.jpg" for i in range(10) if i != 3)
    assert second.get("3.jpg") is None
    record = second.get("5.jpg")
    assert record is not None and record.metadata == {"i": "five"}
    assert paths(second.search(random_signature(55))) == ["5.jpg"]
    assert second.search(random_signature(3)) == []
    [hit] = second.search(random_signature(7))
    assert (hit.filepath, hit.metadata) == ("7.jpg", {"i": 7})


# --- local features: visual words and stored keypoints ---------------------------------


def random_features(seed: int, n: int = 100, width: int = 800, height: int = 600) -> Features:
    """Reproducible features: n keypoints with random descriptors (so words differ per seed)."""
    rng = np.random.default_rng(seed)
    points = (rng.random((n, 2)) * [width - 1, height - 1]).astype(np.float32)
    descriptors = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    return Features(points, descriptors, width, height)


def with_features(filepath: str, seed: int, features: Features | None) -> Record:
    return Record(filepath, random_signature(seed), {"seed": seed}, features=features)


def test_search_words_ranks_by_shared_words(store: SignatureStore) -> None:
    records = [with_features(f"f{seed}.jpg", seed, random_features(seed)) for seed in range(6)]
    store.upsert_many(records)
    target = records[3]
    assert target.words.size > 50
    hits = store.search_words(target.words, size=3)
    assert hits[0].filepath == "f3.jpg"
    assert len(hits) <= 3 and all(hit.score > 0 for hit in hits)
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
    # Half of its words still rank it first; words nobody has find nothing.
    assert store.search_words(target.words[::2], size=1)[0].filepath == "f3.jpg"
    unused = np.setdiff1d(np.arange(2000), np.concatenate([record.words for record in records]))
    assert store.search_words(unused, size=5) == []
    with pytest.raises(ValueError):
        store.search_words([-1], size=5)


def test_features_round_trip_and_missing_count(store: SignatureStore) -> None:
    features = random_features(11)
    store.upsert_many([with_features("with.jpg", 11, features),
                       with_features("flat.jpg", 12, Features.empty(64, 64)),
                       with_features("old.jpg", 13, None)])
    found = store.get_features(["with.jpg", "flat.jpg", "old.jpg", "absent.jpg"])
    assert set(found) == {"with.jpg", "flat.jpg"}  # no record, or no features: left out
    assert len(found["flat.jpg"]) == 0
    again = found["with.jpg"]
    assert (again.width, again.height) == (800, 600)
    assert np.array_equal(again.descriptors, features.descriptors)
    assert np.abs(again.points - features.points).max() <= 0.5  # stored in sub-pixel units
    record = store.get("with.jpg")
    assert record is not None and record.features is not None
    assert np.array_equal(record.features.descriptors, features.descriptors)
    assert store.get("old.jpg").features is None  # type: ignore[union-attr]
    assert store.missing_features() == 1


def test_words_follow_overwrite_and_delete(store: SignatureStore) -> None:
    first, second = random_features(21), random_features(22)
    store.upsert(with_features("x.jpg", 21, first))
    store.upsert(with_features("y.jpg", 23, random_features(23)))
    words_first = with_features("x.jpg", 21, first).words
    assert store.search_words(words_first, size=1)[0].filepath == "x.jpg"
    store.upsert(with_features("x.jpg", 21, second))  # replaced: its old words are gone
    assert "x.jpg" not in [hit.filepath for hit in store.search_words(
        np.setdiff1d(words_first, with_features("x.jpg", 21, second).words), size=5)]
    assert store.search_words(with_features("x.jpg", 21, second).words, size=1)[0].filepath == "x.jpg"
    store.delete("x.jpg")
    assert "x.jpg" not in [hit.filepath for hit in store.search_words(
        with_features("x.jpg", 21, second).words, size=5)]
    assert store.missing_features() == 0
