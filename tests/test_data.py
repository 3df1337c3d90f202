"""Tests of flaxray.data: folder layout, unreadable files, duplicates, patient split, cache, modes."""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))  # conftest's data helpers, whatever pytest's import mode
from conftest import SYNTHETIC_LAYOUT, noise_image  # noqa: E402
from flaxray.data import DataWarning, Dataset, Split, load_dataset  # noqa: E402
from flaxray.data.folder import patient_id, scan_folder  # noqa: E402
from flaxray.data.split import patient_split  # noqa: E402
from flaxray.errors import FlaxrayError  # noqa: E402

SHARED = Path(__file__).parents[1] / ".." / "shared" / "data"
REAL = SHARED / "chest_xray"
ORIG = SHARED / "chest_xray_orig_sample"
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"real data not found at {REAL}")
needs_orig = pytest.mark.skipif(not ORIG.is_dir(), reason=f"real data not found at {ORIG}")

# README table of ../shared/data (before dropping byte duplicates).
README_COUNTS = {"train": {"NORMAL": 1341, "PNEUMONIA": 3875}, "val": {"NORMAL": 8, "PNEUMONIA": 8},
                 "test": {"NORMAL": 234, "PNEUMONIA": 390}}


def load(path, tmp_path, **kw):
    kw.setdefault("image_size", 16)
    kw.setdefault("progress", False)
    return load_dataset(path, cache_dir=tmp_path / "cache", **kw)


def all_files(ds: Dataset) -> set[str]:
    return {str(f) for s in (ds.train, ds.val, ds.test) for f in s.files}


def check_split_invariants(ds: Dataset, val_fraction: float = 0.2, tol: float = 0.1) -> None:
    assert not set(ds.train.patients) & set(ds.val.patients), "a patient is in train and val"
    for s in (ds.train, ds.val, ds.test):
        assert s.x.dtype == np.uint8 and s.y.dtype == np.int32
        assert len(s.x) == len(s.y) == len(s.files) == len(s.patients)
        assert all(str(f).startswith("test/") for f in ds.test.files)
        assert not any(str(f).startswith("test/") for f in [*ds.train.files, *ds.val.files])
    for c in (0, 1):
        n_val, n_all = (ds.val.y == c).sum(), (ds.val.y == c).sum() + (ds.train.y == c).sum()
        assert abs(n_val / n_all - val_fraction) <= tol, (c, n_val, n_all)


# ------------------------------------------------------------------------------------- layout

def one_line_error(excinfo, path) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    assert str(Path(path).resolve()) in msg or str(path) in msg, msg
    return msg


def test_missing_folder(tmp_path):
    with pytest.raises(FlaxrayError) as e:
        load(tmp_path / "nope", tmp_path)
    assert "not found" in one_line_error(e, tmp_path / "nope")


def test_not_a_directory(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(FlaxrayError) as e:
        load(f, tmp_path)
    assert "not a directory" in one_line_error(e, f)


def test_no_train(tmp_path):
    (tmp_path / "data" / "test" / "NORMAL").mkdir(parents=True)
    with pytest.raises(FlaxrayError) as e:
        load(tmp_path / "data", tmp_path)
    msg = one_line_error(e, tmp_path / "data")
    assert "train/" in msg and "{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg" in msg


def test_nested_folder_hint(chest_folder, tmp_path):
    root = chest_folder("outer/chest_xray")
    with pytest.raises(FlaxrayError, match="did you mean .*chest_xray"):
        load(root.parent, tmp_path)


@pytest.mark.parametrize("missing", ["train/PNEUMONIA", "test/NORMAL", "val/PNEUMONIA"])
def test_missing_class_folder(chest_folder, tmp_path, missing):
    root = chest_folder()
    shutil.rmtree(root / missing)
    with pytest.raises(FlaxrayError) as e:
        load(root, tmp_path)
    assert "missing class folder" in one_line_error(e, root / missing)


def test_class_folder_without_images(chest_folder, tmp_path):
    root = chest_folder()
    d = root / "val" / "NORMAL"
    shutil.rmtree(d)
    d.mkdir()
    (d / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    with pytest.raises(FlaxrayError) as e:
        load(root, tmp_path)
    assert "no images" in one_line_error(e, d)


def test_split_is_a_file(chest_folder, tmp_path):
    root = chest_folder()
    shutil.rmtree(root / "val")
    (root / "val").write_text("oops")
    with pytest.raises(FlaxrayError) as e:
        load(root, tmp_path)
    one_line_error(e, root / "val")


@pytest.mark.parametrize("kw, words", [
    ({"image_size": 7}, "image_size"), ({"image_size": 1025}, "image_size"), ({"image_size": 2.5}, "image_size"),
    ({"channels": 2}, "channels"), ({"channels": 4}, "channels"),
    ({"val_fraction": 0.0}, "val_fraction"), ({"val_fraction": 1.0}, "val_fraction"),
    ({"val_fraction": -0.1}, "val_fraction"), ({"split_seed": -1}, "split_seed"), ({"split_seed": 1.5}, "split_seed"),
])
def test_bad_arguments(chest_folder, tmp_path, kw, words):
    root = chest_folder()
    for path in (root, None):
        with pytest.raises(FlaxrayError, match=words) as e:
            load_dataset(path, cache_dir=tmp_path / "cache", progress=False, **kw)
        assert "\n" not in str(e.value)


def test_default_wrong_image_size():
    with pytest.raises(FlaxrayError, match="28x28.*pass a folder") as e:
        load_dataset(image_size=64)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------- synthetic load

def test_synthetic_load(chest_folder, tmp_path):
    root = chest_folder()
    ds = load(root, tmp_path, image_size=24, channels=3)
    n_total = sum(len(v) for c in SYNTHETIC_LAYOUT.values() for v in c.values())
    assert len(ds.train) + len(ds.val) + len(ds.test) == n_total
    assert ds.train.x.shape[1:] == (24, 24, 3) and ds.test.x.shape == (6, 24, 24, 3)
    assert all_files(ds) == {f"{s}/{c}/{n}.jpeg" for s, cs in SYNTHETIC_LAYOUT.items() for c, ns in cs.items() for n in ns}
    for s in (ds.train, ds.val, ds.test):
        for f, y, p in zip(s.files, s.y, s.patients):
            assert y == (1 if "/PNEUMONIA/" in f else 0)
            assert p == patient_id(f)[0]
    check_split_invariants(ds, tol=0.15)
    summ = ds.summary
    json.dumps(summ)
    assert summ["source"] == str(root.resolve())
    assert summ["official_val_merged"] == 4
    assert summ["patients_without_pattern"] == 0
    assert summ["test"] == {"n": 6, "per_class": {"NORMAL": 3, "PNEUMONIA": 3}, "n_patients": 4,
                                      "fraction_pneumonia": 0.5}
    assert summ["train"]["n"] == len(ds.train)
    assert summ["val"]["n_patients"] == len(set(ds.val.patients))
    assert summ["duplicates_dropped"] == [] and summ["unreadable_skipped"] == []
    assert {"image_size", "channels", "fingerprint", "val_fraction", "split_seed"} <= summ.keys()
    assert summ["class_names"] == ["NORMAL", "PNEUMONIA"] and ds.class_names == ("NORMAL", "PNEUMONIA")
    assert "NORMAL=" in repr(ds.train) and "PNEUMONIA=" in repr(ds.train)
    # the patient of val/NORMAL/IM-0001-0004 has 3 more images in official train: all on one side
    side = {("train" if p in set(ds.train.patients) else "val") for p in ["IM-0001"]}
    assert len(side) == 1


def test_only_train_split(chest_folder, tmp_path):
    root = chest_folder(layout={"train": SYNTHETIC_LAYOUT["train"]})
    ds = load(root, tmp_path, image_size=16, channels=1)
    assert ds.test.x.shape == (0, 16, 16, 1) and ds.test.y.shape == (0,) and ds.test.y.dtype == np.int32
    assert ds.summary["official_val_merged"] == 0
    assert ds.summary["test"]["n"] == 0 and ds.summary["test"]["fraction_pneumonia"] is None
    assert len(ds.train) + len(ds.val) == 27
    json.dumps(ds.summary)


def test_patients_without_pattern(chest_folder, tmp_path):
    layout = copy.deepcopy(SYNTHETIC_LAYOUT)
    layout["train"]["NORMAL"] += ["scan_a", "scan_b"]
    ds = load(chest_folder(layout=layout), tmp_path)
    assert ds.summary["patients_without_pattern"] == 2
    assert {"scan_a", "scan_b"} <= {*ds.train.patients, *ds.val.patients}


def test_patient_id():
    assert patient_id("person1_bacteria_1.jpeg") == ("person1", True)
    assert patient_id("person447_virus_921_1.jpeg") == ("person447", True)
    assert patient_id("IM-0115-0001.jpeg") == ("IM-0115", True)
    assert patient_id("IM-0115-0001-0002.jpeg") == ("IM-0115", True)
    assert patient_id("NORMAL2-IM-0173-0001-0001.jpeg") == ("NORMAL2-IM-0173", True)
    assert patient_id("train/NORMAL/NORMAL2-IM-0402-0001.jpeg") == ("NORMAL2-IM-0402", True)
    assert patient_id("weird name.png") == ("weird name", False)


# ---------------------------------------------------------------------------- unreadable files

def truncated_jpeg(name: str) -> bytes:
    buf = io.BytesIO()
    noise_image(name).save(buf, "JPEG", quality=90)
    return buf.getvalue()[: len(buf.getvalue()) // 2]


BAD_FILES = {
    "train/NORMAL/IM-0900-0001.jpeg": truncated_jpeg("t"),
    "train/PNEUMONIA/person900_bacteria_1.jpeg": b"",
    "test/NORMAL/IM-0901-0001.jpeg": b"this is not an image\n",
    "train/NORMAL/.DS_Store": b"\0\0\0\1Bud1\0",
    "val/PNEUMONIA/Thumbs.db": b"\xd0\xcf\x11\xe0",
    "test/PNEUMONIA/notes.txt": b"hello",
}


def test_unreadable_files_skipped(chest_folder, tmp_path):
    root = chest_folder(extra=BAD_FILES)
    with pytest.warns(DataWarning) as rec:
        ds = load(root, tmp_path)
    messages = [str(w.message) for w in rec if issubclass(w.category, DataWarning)]
    for rel in BAD_FILES:
        assert sum(rel in m for m in messages) == 1, (rel, messages)
    skipped = ds.summary["unreadable_skipped"]
    assert sorted(s["file"] for s in skipped) == sorted(BAD_FILES)
    assert all(s["reason"] and "\n" not in s["reason"] for s in skipped)
    reasons = {s["file"]: s["reason"] for s in skipped}
    assert "empty" in reasons["train/PNEUMONIA/person900_bacteria_1.jpeg"]
    assert "truncated" in reasons["train/NORMAL/IM-0900-0001.jpeg"]
    assert not set(BAD_FILES) & all_files(ds)
    assert len(ds.train) + len(ds.val) + len(ds.test) == 37

    # cache hit: the skips are still reported and warned about
    with pytest.warns(DataWarning):
        ds2 = load(root, tmp_path)
    assert ds2.summary["unreadable_skipped"] == skipped
    # strict on the same (cached) folder: the first unreadable file is fatal
    with pytest.raises(FlaxrayError, match="strict") as e:
        load(root, tmp_path, strict=True)
    assert "\n" not in str(e.value)


def test_strict_stray_file(chest_folder, tmp_path):
    root = chest_folder(extra={"train/NORMAL/.DS_Store": b"\0\0\0\1Bud1\0"})
    with pytest.raises(FlaxrayError, match=r"\.DS_Store"):
        load(root, tmp_path, strict=True)


def test_strict_truncated_fresh_cache(chest_folder, tmp_path):
    rel = "train/NORMAL/IM-0900-0001.jpeg"
    root = chest_folder(extra={rel: truncated_jpeg("t")})
    with pytest.raises(FlaxrayError) as e:
        load(root, tmp_path, strict=True)
    assert "IM-0900-0001.jpeg" in str(e.value) and "\n" not in str(e.value)
    # nothing half-prepared was left behind: a non-strict load works and reports it
    with pytest.warns(DataWarning, match="IM-0900-0001"):
        ds = load(root, tmp_path)
    assert [s["file"] for s in ds.summary["unreadable_skipped"]] == [rel]


def test_split_whose_files_all_fail(chest_folder, tmp_path):
    layout = {"train": SYNTHETIC_LAYOUT["train"]}
    extra = {"val/NORMAL/IM-0950-0001.jpeg": b"junk", "val/PNEUMONIA/person950_virus_1.jpeg": b""}
    with pytest.warns(DataWarning):
        ds = load(chest_folder(layout=layout, extra=extra), tmp_path)
    assert ds.summary["official_val_merged"] == 0
    assert len(ds.train) + len(ds.val) == 27 and "" not in all_files(ds)


# ---------------------------------------------------------------------------------- duplicates

def test_duplicates_dropped(chest_folder, tmp_path):
    root = chest_folder()
    # a duplicate inside train/NORMAL, and a test image copied into train/PNEUMONIA
    shutil.copy(root / "train/NORMAL/IM-0002-0001.jpeg", root / "train/NORMAL/IM-0099-0001.jpeg")
    shutil.copy(root / "test/PNEUMONIA/person100_bacteria_1.jpeg", root / "train/PNEUMONIA/person0_bacteria_0.jpeg")
    shutil.copy(root / "test/PNEUMONIA/person100_bacteria_1.jpeg", root / "val/PNEUMONIA/person0_bacteria_9.jpeg")
    ds = load(root, tmp_path)
    dups = {d["file"]: d["duplicate_of"] for d in ds.summary["duplicates_dropped"]}
    assert dups == {
        "train/NORMAL/IM-0099-0001.jpeg": "train/NORMAL/IM-0002-0001.jpeg",
        "train/PNEUMONIA/person0_bacteria_0.jpeg": "test/PNEUMONIA/person100_bacteria_1.jpeg",
        "val/PNEUMONIA/person0_bacteria_9.jpeg": "test/PNEUMONIA/person100_bacteria_1.jpeg",
    }
    files = all_files(ds)
    assert not set(dups) & files
    assert "test/PNEUMONIA/person100_bacteria_1.jpeg" in set(ds.test.files) and len(ds.test) == 6
    assert "train/NORMAL/IM-0002-0001.jpeg" in files


# ------------------------------------------------------------------------------- patient split

def random_pool(seed=1, n_patients=300):
    rng = np.random.default_rng(seed)
    labels, patients = [], []
    for p in range(n_patients):
        y = int(rng.random() < 0.7)
        for _ in range(int(rng.integers(1, 6))):
            labels.append(y)
            patients.append(f"p{p}")
    files = np.array([f"f{i}" for i in range(len(labels))])
    return files, np.array(labels), np.array(patients)


@pytest.mark.parametrize("val_fraction", [0.1, 0.2, 0.5])
def test_patient_split_unit(val_fraction):
    files, labels, patients = random_pool()
    tr, va = patient_split(files, labels, patients, val_fraction, seed=3)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(labels)
    assert not set(patients[tr]) & set(patients[va])
    for c in (0, 1):
        frac = (labels[va] == c).sum() / (labels == c).sum()
        assert abs(frac - val_fraction) < 0.02, (c, frac)
    tr2, va2 = patient_split(files, labels, patients, val_fraction, seed=3)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
    tr3, va3 = patient_split(files, labels, patients, val_fraction, seed=4)
    assert not np.array_equal(va, va3)
    # input order does not matter: same images end up in val
    perm = np.random.default_rng(0).permutation(len(labels))
    _, va_p = patient_split(files[perm], labels[perm], patients[perm], val_fraction, seed=3)
    assert set(files[perm][va_p]) == set(files[va])


def test_patient_split_small_classes():
    # each class with >= 2 patients gets at least one patient on each side
    labels = np.array([0, 0, 1, 1, 1])
    patients = np.array(["a", "b", "c", "c", "d"])
    tr, va = patient_split(patients, labels, patients, 0.05, seed=0)
    assert set(labels[va]) == {0, 1} and set(labels[tr]) == {0, 1}
    tr, va = patient_split(patients[:1], labels[:1], patients[:1], 0.5, seed=0)
    assert list(tr) == [0] and list(va) == []
    tr, va = patient_split([], [], [], 0.2, seed=0)
    assert len(tr) == len(va) == 0


def test_split_seed_deterministic(chest_folder, tmp_path):
    root = chest_folder()
    a = load(root, tmp_path, split_seed=1)
    b = load(root, tmp_path, split_seed=1)
    assert np.array_equal(a.val.files, b.val.files) and np.array_equal(a.train.x, b.train.x)
    others = [load(root, tmp_path, split_seed=s).val.files for s in range(2, 6)]
    assert any(set(o) != set(a.val.files) for o in others)
    assert a.summary["split_seed"] == 1


# -------------------------------------------------------------------------------------- cache

def test_cache_hit_does_not_decode(chest_folder, tmp_path, monkeypatch):
    from flaxray.data import builder, decode

    root = chest_folder()
    calls = []
    real_generate = builder.FlaxrayChestXray._generate_examples
    real_load_image = decode.load_image

    def counting(self, *a, **k):
        calls.append(1)
        return real_generate(self, *a, **k)

    monkeypatch.setattr(builder.FlaxrayChestXray, "_generate_examples", counting)
    first = load(root, tmp_path, channels=1)
    assert calls, "the builder was not run on a fresh cache"
    n_calls = len(calls)

    def boom(*a, **k):
        raise AssertionError("decoded again on a cache hit")

    monkeypatch.setattr(builder.FlaxrayChestXray, "_generate_examples", boom)
    monkeypatch.setattr(decode, "load_image", boom)
    second = load(root, tmp_path, channels=1)
    for s1, s2 in zip((first.train, first.val, first.test), (second.train, second.val, second.test)):
        for field in ("x", "y", "files", "patients"):
            assert np.array_equal(getattr(s1, field), getattr(s2, field))
            assert getattr(s1, field).dtype == getattr(s2, field).dtype
    assert first.summary == second.summary
    cache_dirs = sorted(p.name for p in (tmp_path / "cache" / "tfds").iterdir() if p.is_dir())
    assert cache_dirs == [first.summary["fingerprint"]]

    # other settings or a changed folder are other cache entries
    monkeypatch.setattr(builder.FlaxrayChestXray, "_generate_examples", counting)
    monkeypatch.setattr(decode, "load_image", real_load_image)
    load(root, tmp_path, channels=3)
    assert len(calls) > n_calls
    n_calls = len(calls)
    f = root / "train/NORMAL/IM-0002-0001.jpeg"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = load(root, tmp_path, channels=1)
    assert len(calls) > n_calls and third.summary["fingerprint"] != first.summary["fingerprint"]


def test_cache_env_var(chest_folder, tmp_path, monkeypatch):
    root = chest_folder()
    monkeypatch.setenv("FLAXRAY_CACHE", str(tmp_path / "envcache"))
    ds = load_dataset(root, image_size=16, progress=False)
    assert (tmp_path / "envcache" / "tfds" / ds.summary["fingerprint"]).is_dir()


def test_fingerprint_is_stat_only(chest_folder):
    root = chest_folder()
    scan = scan_folder(root)
    assert len(scan.images) == 37 and scan.splits == ("train", "val", "test")
    assert scan.images[0].rel == "test/NORMAL/IM-0100-0001.jpeg"


# -------------------------------------------------------------------------------- image modes

def _png_bytes(img: Image.Image, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def mode_images() -> dict[str, tuple[bytes, int]]:
    """name -> (file bytes, expected gray level of the whole image)."""
    h, w = 30, 40
    pal = Image.new("P", (w, h), 0)
    pal.putpalette([60, 60, 60] + [0, 0, 0] * 255)
    la = Image.merge("LA", [Image.new("L", (w, h), 90), Image.new("L", (w, h), 0)])
    rgba = Image.new("RGBA", (w, h), (150, 150, 150, 10))
    i16 = Image.fromarray(np.full((h, w), 128 * 257, np.uint16))
    assert i16.mode == "I;16"
    return {
        "IM-0201-0001.jpeg": (_png_bytes(Image.new("L", (w, h), 100), "JPEG", quality=95), 100),
        "IM-0202-0001.png": (_png_bytes(Image.new("RGB", (w, h), (200, 200, 200))), 200),
        "IM-0203-0001.png": (_png_bytes(pal), 60),
        "IM-0204-0001.png": (_png_bytes(i16), 128),
        "IM-0205-0001.jpeg": (_png_bytes(Image.new("CMYK", (w, h), (0, 0, 0, 155)), "JPEG", quality=95), 100),
        "IM-0206-0001.png": (_png_bytes(la), 90),
        "IM-0207-0001.png": (_png_bytes(rgba), 150),
        "IM-0208-0001.tif": (_png_bytes(i16, "TIFF"), 128),
        "IM-0209-0001.bmp": (_png_bytes(Image.new("1", (w, h), 1), "BMP"), 255),
    }


def exif_rotated_jpeg() -> bytes:
    """Stored 40 wide x 20 tall, left half black, right half white, EXIF orientation 6 (rotate
    90 degrees clockwise to display): upright, the black half is on top."""
    a = np.zeros((20, 40), np.uint8)
    a[:, 20:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    return _png_bytes(Image.fromarray(a, "L"), "JPEG", quality=95, exif=exif)


@pytest.mark.parametrize("channels", [1, 3])
def test_image_modes(chest_folder, tmp_path, channels):
    images = mode_images()
    extra = {f"test/NORMAL/{name}": data for name, (data, _) in images.items()}
    extra["test/PNEUMONIA/person300_virus_1.jpeg"] = exif_rotated_jpeg()
    root = chest_folder(extra=extra)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        ds = load(root, tmp_path, image_size=32, channels=channels)
    test = ds.test
    assert test.x.shape == (len(SYNTHETIC_LAYOUT["test"]["NORMAL"]) + len(SYNTHETIC_LAYOUT["test"]["PNEUMONIA"])
                            + len(images) + 1, 32, 32, channels)
    assert test.x.dtype == np.uint8 and ds.train.x.shape[1:] == (32, 32, channels)
    index = {str(f): i for i, f in enumerate(test.files)}
    for name, (_, level) in images.items():
        x = test.x[index[f"test/NORMAL/{name}"]].astype(float)
        assert abs(x.mean() - level) < 4 and x.std() < 4, (name, x.mean(), x.std())
        if channels == 3:
            assert np.abs(x[..., 0] - x[..., 2]).max() < 4
    rot = test.x[index["test/PNEUMONIA/person300_virus_1.jpeg"]].astype(float).mean(-1)
    assert rot[:12].mean() < 40 and rot[-12:].mean() > 215, "EXIF orientation not applied"
    assert abs(rot[:, :16].mean() - rot[:, 16:].mean()) < 10


def test_load_image_large_and_grayscale(tmp_path):
    from flaxray.data.decode import load_image

    p = tmp_path / "big.jpeg"
    g = np.tile(np.linspace(0, 255, 700).astype(np.uint8), (300, 1))  # horizontal gradient
    Image.fromarray(g, "L").save(p, quality=95)
    a = load_image(p, 64, 3)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert a[:, :4].mean() < 15 and a[:, -4:].mean() > 240
    assert np.array_equal(a[..., 0], a[..., 1])
    assert load_image(p, 20, 1).shape == (20, 20, 1)


# ------------------------------------------------------------------------------ embedded default

@pytest.mark.parametrize("channels", [1, 3])
def test_default(channels):
    ds = load_dataset(channels=channels)
    for s in (ds.train, ds.val, ds.test):
        assert s.x.shape[1:] == (28, 28, channels) and s.x.dtype == np.uint8
        assert s.y.dtype == np.int32 and len(s.files) == len(s.x) == len(s.patients)
    assert len(ds.train) + len(ds.val) + len(ds.test) == 5824
    assert len(ds.test) == 618 and 0.15 < len(ds.val) / (len(ds.train) + len(ds.val)) < 0.25
    assert not set(ds.train.patients) & set(ds.val.patients)
    assert ds.train.x.mean() > 50
    if channels == 3:
        assert np.array_equal(ds.train.x[..., 0], ds.train.x[..., 2])
    summ = ds.summary
    json.dumps(summ)
    assert summ["source"].startswith("embedded default") and summ["image_size"] == 28
    assert summ["channels"] == channels and len(summ["duplicates_dropped"]) == 32
    assert summ["official_val_merged"] == 16 and summ["unreadable_skipped"] == []
    assert summ["test"]["per_class"] == {"NORMAL": 231, "PNEUMONIA": 387}
    assert summ["class_names"] == ["NORMAL", "PNEUMONIA"] and ds.class_names == ("NORMAL", "PNEUMONIA")


def test_default_matches_folder_loader_shape():
    a = load_dataset(channels=1, split_seed=5)
    b = load_dataset(channels=1, split_seed=5)
    assert np.array_equal(a.val.files, b.val.files)
    assert isinstance(a.train, Split)


# ----------------------------------------------------------------------------------- real data

@pytest.fixture(scope="module")
def real16(tmp_path_factory):
    return load_dataset(REAL, image_size=16, channels=1, progress=False,
                        cache_dir=tmp_path_factory.mktemp("realcache"))


@needs_real
def test_real_counts(real16):
    summ = real16.summary
    dups = summ["duplicates_dropped"]
    assert len(dups) == 32 and summ["unreadable_skipped"] == []
    for split, counts in README_COUNTS.items():
        for cls, n in counts.items():
            n_dups = sum(d["file"].startswith(f"{split}/{cls}/") for d in dups)
            assert summ["official_splits"][split][cls] == n - n_dups, (split, cls)
    assert len(real16.train) + len(real16.val) + len(real16.test) == 5856 - 32
    assert summ["official_val_merged"] == 16
    assert summ["test"]["n"] == 624 - sum(d["file"].startswith("test/") for d in dups)
    assert summ["patients_without_pattern"] == 0
    assert real16.train.x.shape[1:] == (16, 16, 1)
    json.dumps(summ)


@needs_real
def test_real_patient_split(real16):
    check_split_invariants(real16, tol=0.01)
    frac = real16.summary["train"]["fraction_pneumonia"]
    assert abs(frac - real16.summary["val"]["fraction_pneumonia"]) < 0.01


@needs_real
def test_default_matches_real_folder(real16):
    default = load_dataset(channels=1)
    assert sorted(default.test.files) == sorted(real16.test.files)
    assert sorted([*default.train.files, *default.val.files]) == sorted([*real16.train.files, *real16.val.files])
    assert np.array_equal(np.sort(default.val.files), np.sort(real16.val.files))  # same patient split


@needs_orig
@pytest.mark.parametrize("channels", [1, 3])
def test_real_originals(tmp_path, channels):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        ds = load(ORIG, tmp_path, image_size=64, channels=channels)
    assert len(ds.train) + len(ds.val) == 20 and ds.test.x.shape == (0, 64, 64, channels)
    for s in (ds.train, ds.val):
        assert s.x.shape[1:] == (64, 64, channels) and s.x.dtype == np.uint8
    assert ds.summary["unreadable_skipped"] == [] and ds.summary["duplicates_dropped"] == []
    x = np.concatenate([ds.train.x, ds.val.x]).astype(float)
    assert 30 < x.mean() < 220 and x.std() > 20
    assert len(ds.val) > 0 and not set(ds.train.patients) & set(ds.val.patients)
