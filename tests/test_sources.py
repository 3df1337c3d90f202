"""Tests of the data sources beyond the Kaggle folder: arrays, .npz, class folders, TFDS (no network).

The multi-class data is scikit-learn's `load_digits` (1797 real 8x8 images, 10 classes, shipped
with the package). Every check here is deterministic: nothing is statistical, nothing downloads.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from flaxray.data import from_arrays, from_tfds, load_dataset
from flaxray.data.arrays import convert
from flaxray.data.split import patient_split
from flaxray.errors import FlaxrayError

sklearn_datasets = pytest.importorskip("sklearn.datasets")
DIGITS = [str(k) for k in range(10)]


@pytest.fixture(scope="module")
def digits():
    d = sklearn_datasets.load_digits()
    return np.round(d.images * (255 / 16)).astype(np.uint8), d.target.astype(np.int64)


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg, msg
    return msg


def check_dataset(ds, n_classes, shape):
    for s in (ds.train, ds.val, ds.test):
        assert s.x.dtype == np.uint8 and s.y.dtype == np.int32 and s.x.shape[1:] == shape
        assert len(s.x) == len(s.y) == len(s.files) == len(s.patients)
        assert s.y.min() >= 0 and s.y.max() < n_classes
    assert not set(ds.train.patients) & set(ds.val.patients)
    assert len(ds.class_names) == n_classes and ds.summary["class_names"] == list(ds.class_names)
    json.dumps(ds.summary)


# ----------------------------------------------------------------------------------- arrays

def test_from_arrays_carves_val_by_group(digits):
    x, y = digits
    groups = y[:1500] * 1000 + np.arange(1500) // 20  # "patients" of one class, about two images each
    ds = from_arrays(x[:1500], y[:1500], x_test=x[1500:], y_test=y[1500:], groups=groups, class_names=DIGITS,
                     split_seed=2)
    check_dataset(ds, 10, (8, 8, 1))
    assert ds.class_names == tuple(DIGITS) and len(ds.test) == 297
    assert np.array_equal(ds.test.x[..., 0], x[1500:]) and np.array_equal(ds.test.y, y[1500:])
    assert len(ds.train) + len(ds.val) == 1500
    for c in range(10):  # stratified: each class gives about a fifth of its images
        n_val, n_all = (ds.val.y == c).sum(), (ds.val.y == c).sum() + (ds.train.y == c).sum()
        assert abs(n_val / n_all - 0.2) < 0.05, (c, n_val, n_all)
    s = ds.summary
    assert s["source"] == "arrays" and s["path"] is None and s["image_size"] == 8 and s["channels"] == 1
    assert s["official_val_merged"] == 0 and s["val_given"] is False and s["patients_without_pattern"] == 0
    assert s["test"]["per_class"] == {c: int((y[1500:] == int(c)).sum()) for c in DIGITS}
    assert "fraction_pneumonia" not in s["train"]
    again = from_arrays(x[:1500], y[:1500], x_test=x[1500:], y_test=y[1500:], groups=groups, class_names=DIGITS,
                        split_seed=2)
    assert np.array_equal(again.val.files, ds.val.files) and again.summary == s
    other = from_arrays(x[:1500], y[:1500], groups=groups, class_names=DIGITS, split_seed=3)
    assert set(other.val.files) != set(ds.val.files) and len(other.test) == 0


def test_from_arrays_given_val_and_defaults(digits):
    x, y = digits
    ds = from_arrays(x[:1000], y[:1000], x[1000:1200], y[1000:1200])
    assert ds.class_names == tuple(DIGITS)  # "0".."9" from the largest label
    assert np.array_equal(ds.val.y, y[1000:1200]) and np.array_equal(ds.train.x[..., 0], x[:1000])
    assert ds.summary["val_given"] is True and len(ds.test) == 0 and ds.test.x.shape == (0, 8, 8, 1)
    assert len(set(ds.train.patients)) == 1000  # each image its own group
    binary = from_arrays(x[:100], (y[:100] > 4).astype(np.int32), class_names=["low", "high"])
    assert binary.class_names == ("low", "high") and "fraction_pneumonia" not in binary.summary["val"]


def test_from_arrays_resize_and_channels(digits):
    x, y = digits
    ds = from_arrays(x[:200], y[:200], image_size=16, channels=3)
    assert ds.train.x.shape[1:] == (16, 16, 3) and ds.summary["image_size"] == 16
    i = int(np.flatnonzero(np.isin(ds.train.files, ["train/%d/0" % y[0]]))[0])
    want = np.asarray(Image.fromarray(x[0]).resize((16, 16), Image.Resampling.BILINEAR))
    assert np.array_equal(ds.train.x[i, ..., 0], want) and np.array_equal(ds.train.x[i, ..., 2], want)
    rgb = np.random.default_rng(0).integers(0, 256, (5, 9, 9, 3), dtype=np.uint8)
    gray = convert(rgb, None, 1)[..., 0]
    assert all(np.array_equal(gray[k], np.asarray(Image.fromarray(rgb[k], "RGB").convert("L"))) for k in range(5))
    ragged = [np.zeros((10, 12), np.uint8), np.full((20, 8), 255, np.uint8)]
    small = from_arrays(ragged * 3, [0, 1] * 3, image_size=8)
    assert small.train.x.shape[1:] == (8, 8, 1)


def save_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_npz_round_trip(digits, tmp_path):
    x, y = digits
    groups = np.array([f"g{k // 2}" for k in range(1200)])
    p = save_npz(tmp_path / "digits.npz", x_train=x[:1200], y_train=y[:1200], x_test=x[1200:], y_test=y[1200:],
                 groups_train=groups, class_names=np.array(DIGITS))
    ds = load_dataset(p, channels=1, split_seed=4)
    ref = from_arrays(x[:1200], y[:1200], x_test=x[1200:], y_test=y[1200:], groups=groups, class_names=DIGITS,
                      split_seed=4)
    for a, b in zip((ds.train, ds.val, ds.test), (ref.train, ref.val, ref.test)):
        assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y) and np.array_equal(a.patients, b.patients)
    check_dataset(ds, 10, (8, 8, 1))
    assert ds.summary["path"] == ds.summary["source"] == str(p) and ds.summary["fingerprint"] == ref.summary["fingerprint"]
    again = load_dataset(ds.summary["path"], channels=1, split_seed=4)
    assert again.summary == ds.summary
    rgb = load_dataset(str(p), image_size=16)  # load_dataset's default: 3 channels
    assert rgb.train.x.shape[1:] == (16, 16, 3)


X = np.zeros((6, 8, 8), np.uint8)
Y = np.array([0, 1, 2, 0, 1, 2])


@pytest.mark.parametrize("kwargs, words", [
    ({"y_train": Y[:5]}, "mismatched lengths: x_train has 6 images but y_train has 5"),
    ({"groups": ["a"] * 4}, "mismatched lengths: groups has 4 ids"),
    ({"class_names": ["a", "b"]}, "label 2 outside the class list"),
    ({"y_train": Y - 1}, "label -1 outside the class list"),
    ({"y_train": Y.astype(float)}, "integer class indices"),
    ({"y_train": np.zeros(6, int)}, "one class only"),
    ({"y_train": np.zeros(6, int), "class_names": ["a"]}, "one class only"),
    ({"class_names": ["a", "a", "b"]}, "distinct"),
    ({"class_names": "abc"}, "list of names"),
    ({"x_train": X.astype(np.float32)}, "float32, not uint8"),
    ({"x_train": np.where(np.eye(8, dtype=bool), np.nan, 0.0)[None].repeat(6, 0)}, "NaN pixels"),
    ({"x_train": np.zeros((6, 8, 8, 4), np.uint8)}, "C 1 or 3"),
    ({"x_train": [np.zeros((8, 8), np.uint8)] * 5 + [np.zeros((9, 8), np.uint8)]}, "images of different shapes"),
    ({"x_test": np.zeros((2, 9, 9), np.uint8), "y_test": [0, 1]}, "images of different shapes: x_train is"),
    ({"x_val": X}, "x_val and y_val go together"),
    ({"x_test": X, "y_test": Y + 5, "class_names": list("abc")}, "y_test has label 5"),
])
def test_from_arrays_errors(kwargs, words):
    args = {"x_train": X, "y_train": Y, **kwargs}
    with pytest.raises(FlaxrayError) as e:
        from_arrays(**args)
    assert words in one_line(e)


@pytest.mark.parametrize("arrays, words", [
    ({"x_train": X, "y_train": Y, "X_test": X}, "unexpected key 'X_test'"),
    ({"x_train": X}, "no 'y_train' key"),
    ({"x_train": X, "y_train": Y, "x_test": X}, "no 'y_test' key"),
    ({"x_train": X, "y_train": Y, "groups_train": np.array(["a"])}, "groups_train has 1 ids but x_train has 6"),
    ({"x_train": X.astype(np.int16), "y_train": Y}, "int16, not uint8"),
    ({"x_train": X, "y_train": Y, "class_names": np.array(["a", "b"])}, "outside the class list"),
])
def test_npz_errors(tmp_path, arrays, words):
    p = save_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(FlaxrayError) as e:
        load_dataset(p)
    msg = one_line(e)
    assert words in msg and str(p) in msg


def test_npz_unreadable(tmp_path):
    with pytest.raises(FlaxrayError, match="not found"):
        load_dataset(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(FlaxrayError, match="cannot read") as e:
        load_dataset(tmp_path / "junk.npz")
    one_line(e)
    np.savez(tmp_path / "obj.npz", x_train=np.array([np.zeros(2), np.zeros(3)], dtype=object), y_train=[0, 1])
    with pytest.raises(FlaxrayError, match="cannot read") as e:
        load_dataset(tmp_path / "obj.npz")
    one_line(e)


# ------------------------------------------------------------------------------- patient split

def old_binary_split(labels, patients, val_fraction, seed):
    """patient_split as it was before it knew C classes (ties to class 1), for the regression test."""
    uniq, inv = np.unique(patients, return_inverse=True)
    counts = np.zeros((len(uniq), 2), np.int64)
    np.add.at(counts, (inv, labels), 1)
    patient_class = (counts[:, 1] >= counts[:, 0]).astype(np.int64)
    sizes = counts.sum(axis=1)
    rng = np.random.default_rng(seed)
    in_val = np.zeros(len(uniq), bool)
    for c in (0, 1):
        members = np.flatnonzero(patient_class == c)
        if len(members) == 0:
            continue
        order = members[rng.permutation(len(members))]
        target = val_fraction * sizes[members].sum()
        taken, chosen = 0, []
        for p in order:
            if taken + sizes[p] / 2 < target:
                chosen.append(p)
                taken += sizes[p]
        if len(members) >= 2:
            if not chosen:
                chosen = [order[0]]
            elif len(chosen) == len(members):
                chosen = chosen[:-1]
        in_val[chosen] = True
    return np.flatnonzero(~in_val[inv]), np.flatnonzero(in_val[inv])


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_patient_split_binary_unchanged(seed):
    rng = np.random.default_rng(seed)
    patients = np.array([f"p{k}" for k in rng.integers(0, 150, 400)])
    labels = rng.integers(0, 2, 400)  # mixed-class patients too: exercises the tie rule
    for vf in (0.1, 0.2, 0.5):
        new = patient_split(patients, labels, patients, vf, seed)
        old = old_binary_split(labels, patients, vf, seed)
        assert all(np.array_equal(a, b) for a, b in zip(new, old))


def test_patient_split_multiclass():
    rng = np.random.default_rng(5)
    patients = np.repeat(np.arange(600), 2).astype(str)
    labels = np.repeat(rng.integers(0, 4, 600), 2)
    tr, va = patient_split(patients, labels, patients, 0.25, 3, num_classes=4)
    assert not set(patients[tr]) & set(patients[va]) and len(tr) + len(va) == 1200
    for c in range(4):
        assert abs((labels[va] == c).sum() / (labels == c).sum() - 0.25) < 0.02
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        patient_split(patients, labels, patients, 0.25, 3, num_classes=3)


# ------------------------------------------------------------------------------- class folders

def write_digit_folder(root, x, y, layout=(("train", 0, 300), ("val", 300, 340), ("test", 340, 400))):
    """sklearn digits as lossless PNGs in ROOT/{split}/{digit}/{index}.png; returns root."""
    for split, start, stop in layout:
        for i in range(start, stop):
            d = root / split / DIGITS[y[i]]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i]).save(d / f"{i:04d}.png")
    return root


def test_class_folder_digits(digits, tmp_path):
    x, y = digits
    root = write_digit_folder(tmp_path / "digits", x, y)
    for k, name in enumerate(("person1_bacteria_1.png", "person1_virus_2.png")):  # one Kaggle-style patient
        Image.fromarray(x[400 + k]).save(root / "train" / "3" / name)
    ds = load_dataset(root, image_size=8, channels=1, cache_dir=tmp_path / "cache", progress=False)
    check_dataset(ds, 10, (8, 8, 1))
    assert ds.class_names == tuple(DIGITS)
    assert len(ds.train) + len(ds.val) == 342 and len(ds.test) == 60
    for s in (ds.train, ds.val, ds.test):
        for img, label, f in zip(s.x, s.y, s.files):
            split, cls, name = str(f).split("/")
            assert DIGITS[label] == cls
            if name.startswith("person1"):
                continue
            assert np.array_equal(img[..., 0], x[int(name[:4])]), f  # PNG at its own size: the pixels as given
    assert len({*ds.train.patients, *ds.val.patients}) == 341  # person1's two images are one group
    s = ds.summary
    assert s["patients_without_pattern"] == 400 and s["official_val_merged"] == 40 and s["source"] == str(root)
    assert s["path"] == str(root) and s["official_splits"]["test"] == {c: int((y[340:400] == int(c)).sum()) for c in DIGITS}
    again = load_dataset(s["path"], image_size=8, channels=1, cache_dir=tmp_path / "cache", progress=False)
    assert again.summary == s and np.array_equal(again.val.x, ds.val.x)
    big = load_dataset(root, image_size=16, cache_dir=tmp_path / "cache", progress=False)
    assert big.train.x.shape[1:] == (16, 16, 3) and big.summary["fingerprint"] != s["fingerprint"]


def test_class_folder_layouts(tmp_path):
    from flaxray.data.folder import folder_classes

    def make(*rels):
        root = tmp_path / f"f{len(list(tmp_path.iterdir()))}"
        for rel in rels:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.new("L", (9, 9), 7 * len(rel)).save(root / rel)
        return root

    assert folder_classes(make("train/NORMAL/a.png", "train/PNEUMONIA/b.png")) is None  # the Kaggle layout
    assert folder_classes(make("train/NORMAL/a.png", "train/PNEUMONIA/b.png", "train/COVID/c.png")) == (
        "COVID", "NORMAL", "PNEUMONIA")
    for rels, words in [
        (("train/cat/a.png", "test/cat/b.png"), "only cat/"),
        (("train/cat/a.png", "train/dog/b.png", "test/owl/c.png"), "not a class of train/"),
    ]:
        root = make(*rels)
        with pytest.raises(FlaxrayError, match=words) as e:
            load_dataset(root, cache_dir=tmp_path / "cache", progress=False)
        assert str(root) in one_line(e)
    root = make("train/cat/a.png", "train/dog/b.png")
    (root / "train" / "emu").mkdir()
    with pytest.raises(FlaxrayError, match="no images in") as e:
        load_dataset(root, cache_dir=tmp_path / "cache", progress=False)
    one_line(e)


# ------------------------------------------------------------------------------------- TFDS

tfds = pytest.importorskip("tensorflow_datasets")
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TFDS_SPLITS = {"train": (0, 200), "validation": (200, 240), "test": (240, 300)}


def _png(a) -> io.BytesIO:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")  # encoded here: TFDS would need TensorFlow to encode arrays
    buf.seek(0)
    return buf


class FlaxrayTestDigits(tfds.core.GeneratorBasedBuilder):
    """300 sklearn digits as a registered TFDS set (train / validation / test), in generation order."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, disable_shuffling=True, supervised_keys=("image", "label"),
            features=tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(8, 8, 1)),
                                                 "label": tfds.features.ClassLabel(names=NAMES),
                                                 "note": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(start, stop) for split, (start, stop) in TFDS_SPLITS.items()}

    def _generate_examples(self, start, stop):
        d = sklearn_datasets.load_digits()
        x = np.round(d.images * (255 / 16)).astype(np.uint8)
        for i in range(start, stop):
            yield i, {"image": _png(x[i]), "label": int(d.target[i]), "note": f"digit {i}"}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    FlaxrayTestDigits(data_dir=str(root), file_format="array_record").download_and_prepare()
    return root


@pytest.fixture
def no_download(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("flaxray asked TFDS to download or prepare")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", refuse)


def test_tfds_by_name(digits, tfds_dir, no_download):
    x, y = digits
    ds = load_dataset("tfds:flaxray_test_digits", data_dir=tfds_dir, channels=1, split_seed=1)
    check_dataset(ds, 10, (8, 8, 1))
    assert ds.class_names == tuple(NAMES) and len(ds.test) == 60 and len(ds.train) + len(ds.val) == 240
    offset = {"train": 0, "val": 200, "test": 240}
    for s in (ds.train, ds.val, ds.test):
        for img, label, f in zip(s.x, s.y, s.files):
            split, cls, i = str(f).split("/")
            assert np.array_equal(img[..., 0], x[offset[split] + int(i)]) and label == y[offset[split] + int(i)]
            assert NAMES[label] == cls
    summ = ds.summary
    assert summ["official_val_merged"] == 40 and summ["path"] == summ["source"] == "tfds:flaxray_test_digits"
    assert summ["data_dir"] == str(tfds_dir) and summ["tfds"]["splits"] == {"train": "train", "val": "validation",
                                                                             "test": "test"}
    again = load_dataset(summ["path"], data_dir=summ["data_dir"], channels=1, split_seed=1)
    assert again.summary == summ
    # the builder directory itself, and other splits
    d = tfds_dir / "flaxray_test_digits" / "1.0.0"
    by_dir = load_dataset(d, channels=1, split_seed=1)
    assert by_dir.summary["fingerprint"] == summ["fingerprint"] and by_dir.summary["path"] == str(d)
    assert np.array_equal(by_dir.val.x, ds.val.x)
    no_val = from_tfds("flaxray_test_digits", data_dir=tfds_dir, splits={"train": "train", "test": "test"},
                       image_size=16, channels=3)
    assert no_val.summary["official_val_merged"] == 0 and no_val.train.x.shape[1:] == (16, 16, 3)


def test_tfds_errors(tfds_dir, tmp_path, no_download):
    empty = tmp_path / "empty"
    with pytest.raises(FlaxrayError, match="not prepared locally") as e:
        load_dataset("tfds:flaxray_test_digits", data_dir=empty)
    assert str(empty) in one_line(e)
    assert not any(empty.rglob("*.array_record*"))
    with pytest.raises(FlaxrayError, match="unknown TFDS data set 'flaxray_no_such_set'") as e:
        load_dataset("tfds:flaxray_no_such_set", data_dir=tfds_dir)
    assert str(tfds_dir) in one_line(e)
    with pytest.raises(FlaxrayError, match="unknown split 'valid' .*its splits: ") as e:
        from_tfds("tfds:flaxray_test_digits", data_dir=tfds_dir, splits={"train": "train", "val": "valid"})
    one_line(e)
    with pytest.raises(FlaxrayError, match="no 'train' split") as e:
        from_tfds("flaxray_test_digits", data_dir=tfds_dir, splits={"test": "test"})
    one_line(e)


class FlaxrayTestUnregistered(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Code that is not importable later (not registered), no supervised keys: read from its files."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "label": tfds.features.ClassLabel(names=["dark", "light"]), "image": tfds.features.Image(shape=(8, 8, 1))}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(12):
            yield i, {"image": _png(np.full((8, 8), 20 * i, np.uint8)), "label": int(i >= 6)}


def test_tfds_unregistered_from_files(tmp_path, monkeypatch):
    FlaxrayTestUnregistered(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", None)  # nothing may prepare now
    ds = load_dataset("tfds:flaxray_test_unregistered", data_dir=tmp_path, channels=1)
    assert ds.class_names == ("dark", "light") and len(ds.train) + len(ds.val) == 12 and len(ds.test) == 0
    assert ds.summary["tfds"]["image"] == "image" and ds.summary["tfds"]["label"] == "label"
    light = np.concatenate([ds.train.x[ds.train.y == 1], ds.val.x[ds.val.y == 1]])
    assert sorted(int(v) for v in light[:, 0, 0, 0]) == [120, 140, 160, 180, 200, 220]
