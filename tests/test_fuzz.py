"""Bad input, fuzzed with hypothesis: every file, folder and flag either loads (right pixels, right
label), is skipped with a DataWarning naming it, or fails with a one-line error; never a traceback,
never a silently wrong image."""

from __future__ import annotations

import contextlib
import io
import math
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from PIL import Image

from flaxray.data import DataWarning, load_dataset
from flaxray.data.decode import decode_entry
from flaxray.data.folder import IMAGE_EXTENSIONS, FileEntry
from flaxray.errors import FlaxrayError
from studies import _cli, seed_variance

EXTENSIONS = sorted(IMAGE_EXTENSIONS)
# The formats Pillow writes each mode in without converting it first (a conversion on save would be
# the writer's doing, not something the loader could get right or wrong).
NATIVE = {
    "L": ("JPEG", "PNG", "TIFF", "BMP", "GIF", "WEBP"), "RGB": ("JPEG", "PNG", "TIFF", "BMP", "GIF", "WEBP"),
    "CMYK": ("JPEG", "TIFF"), "P": ("PNG", "TIFF", "BMP", "GIF"), "I;16": ("PNG", "TIFF"),
    "LA": ("PNG", "TIFF", "WEBP"), "RGBA": ("PNG", "TIFF", "WEBP"), "1": ("PNG", "TIFF", "BMP"),
    "I": ("TIFF",), "F": ("TIFF",),
}


def constant_image(mode: str, level: int, size: tuple[int, int]) -> Image.Image:
    """An image in `mode` whose every pixel means gray `level` (0..255; 0 or 255 for mode "1")."""
    value = {"L": level, "RGB": (level,) * 3, "CMYK": (0, 0, 0, 255 - level), "P": 0, "I;16": level * 257,
             "LA": (level, 77), "RGBA": (level,) * 3 + (77,), "1": level // 255, "I": level * 257,
             "F": level / 255}[mode]
    img = Image.new(mode, size, value)
    if mode == "P":
        img.putpalette([level] * 3 * 256)
    return img


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **({"lossless": True} if fmt == "WEBP" else {}), **({"quality": 95} if fmt == "JPEG" else {}),
             **kw)
    return buf.getvalue()


@st.composite
def gray_files(draw):
    """(bytes, file extension, expected gray level, tolerance): any mode in any format that stores it,
    under any image extension (a PNG named .jpeg is fine: the content decides)."""
    mode = draw(st.sampled_from(sorted(NATIVE)))
    fmt = draw(st.sampled_from(NATIVE[mode]))
    level = draw(st.sampled_from([0, 255]) if mode == "1" else st.integers(0, 255))
    size = (draw(st.integers(1, 40)), draw(st.integers(1, 40)))
    tolerance = 4 if fmt == "JPEG" else 1
    return encode(constant_image(mode, level, size), fmt), draw(st.sampled_from(EXTENSIONS)), level, tolerance


def decode(folder: Path, data: bytes, name: str, size: int, channels: int):
    (folder / name).write_bytes(data)
    return decode_entry(folder, FileEntry(name, "train", 0, len(data), 0), size, channels)


def assert_skip_reason(reason):
    assert isinstance(reason, str) and reason.strip() and "\n" not in reason, reason


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@settings(max_examples=80, deadline=None)
@given(file=gray_files(), size=st.integers(8, 24), channels=st.sampled_from([1, 3]))
def test_reencoded_images_load_as_the_gray_they_hold(scratch, file, size, channels):
    data, ext, level, tolerance = file
    array, reason = decode(scratch, data, f"x{ext}", size, channels)
    assert reason is None, reason
    assert array.shape == (size, size, channels) and array.dtype == np.uint8
    assert np.abs(array.astype(int) - level).max() <= tolerance, (level, array.min(), array.max())


@settings(max_examples=40, deadline=None)
@given(rgb=st.tuples(*[st.integers(0, 255)] * 3), fmt=st.sampled_from(["PNG", "TIFF", "BMP", "WEBP"]),
       channels=st.sampled_from([1, 3]))
def test_colour_channels_keep_their_order(scratch, rgb, fmt, channels):
    array, reason = decode(scratch, encode(Image.new("RGB", (9, 7), rgb), fmt), "c.png", 8, channels)
    assert reason is None, reason
    expected = rgb if channels == 3 else [(rgb[0] * 299 + rgb[1] * 587 + rgb[2] * 114) / 1000]  # ITU-R 601 luma
    assert np.abs(array.reshape(-1, channels).astype(float) - expected).max() <= 1


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL notes on broken files; the outcome is what counts
@settings(max_examples=60, deadline=None)
@given(mode=st.sampled_from(sorted(NATIVE)), data=st.data(), cut=st.floats(0, 1, exclude_max=True),
       seed=st.integers(0, 2**32 - 1))
def test_a_truncated_file_is_skipped_or_loads_whole(scratch, mode, data, cut, seed):
    """A cut file must not come out as a partly grey or black image: skipped, or what the whole file gives."""
    fmt = data.draw(st.sampled_from(NATIVE[mode]))
    noise = np.random.default_rng(seed).integers(0, 256, (24, 31), dtype=np.uint8)
    img = Image.fromarray(noise, "L").convert(mode) if mode != "I;16" else Image.fromarray(noise.astype(np.uint16) * 257)
    whole = encode(img, fmt)
    full, reason = decode(scratch, whole, "t.png", 12, 1)
    assert reason is None, reason
    array, reason = decode(scratch, whole[: int(cut * len(whole))], "t.png", 12, 1)
    if array is None:
        assert_skip_reason(reason)
    else:
        np.testing.assert_array_equal(array, full)


MAGIC = [b"", b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"BM", b"GIF89a", b"II*\x00", b"MM\x00*",
         b"RIFF\x10\0\0\0WEBPVP8 "]


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL notes on broken files; the outcome is what counts
@settings(max_examples=100, deadline=None)
@given(magic=st.sampled_from(MAGIC), body=st.binary(max_size=600), ext=st.sampled_from(EXTENSIONS))
def test_random_bytes_never_raise(scratch, magic, body, ext):
    array, reason = decode(scratch, magic + body, f"r{ext}", 8, 3)
    if array is None:
        assert_skip_reason(reason)
    else:
        assert array.shape == (8, 8, 3) and array.dtype == np.uint8


# EXIF orientation o: how to turn the stored pixels upright (the EXIF spec, written with numpy).
UPRIGHT = {1: lambda a: a, 2: np.fliplr, 3: lambda a: np.rot90(a, 2), 4: np.flipud, 5: np.transpose,
           6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 2).T, 8: lambda a: np.rot90(a, 1)}
STORED = {**UPRIGHT, 6: UPRIGHT[8], 8: UPRIGHT[6]}  # the inverse of each (6 and 8 undo each other)


@settings(max_examples=24, deadline=None)
@given(orientation=st.integers(1, 8), fmt=st.sampled_from(["JPEG", "PNG", "WEBP"]))
def test_exif_orientation_is_applied(scratch, orientation, fmt):
    upright = np.zeros((16, 24), np.uint8)
    upright[:8, :12] = 255  # top-left quadrant bright: any wrong turn or flip moves it
    stored = np.ascontiguousarray(STORED[orientation](upright))
    assert np.array_equal(UPRIGHT[orientation](stored), upright)
    exif = Image.Exif()
    exif[0x0112] = orientation
    array, reason = decode(scratch, encode(Image.fromarray(stored, "L"), fmt, exif=exif), "o.jpeg", 8, 1)
    assert reason is None, reason
    quadrants = array[..., 0].reshape(2, 4, 2, 4).mean(axis=(1, 3))
    assert quadrants[0, 0] > 200 and quadrants[0, 1] < 55 and quadrants[1].max() < 55, quadrants


def test_float_image_with_nan_is_skipped_not_black(scratch):
    pixels = np.full((6, 6), 0.5, np.float32)
    pixels[0, 0] = np.nan
    array, reason = decode(scratch, encode(Image.fromarray(pixels, "F"), "TIFF"), "n.tif", 8, 1)
    assert array is None and "NaN" in reason


# ------------------------------------------------------------------------------------ whole folders

BAD_KINDS = ("truncated", "random", "empty", "nan", "text", "hidden", "subdir", "fifo", "badname", "broken_link")


@st.composite
def folders(draw):
    """A Kaggle-like layout with odd parts: each class folder may be missing or a file, and holds good
    images (any mode, format and extension) among bad files of every kind."""
    layout = {}
    for split in ("train", "val", "test"):
        if draw(st.integers(0, 19)) < (19 if split == "train" else 12):
            kinds = {cls: draw(st.sampled_from(["dir"] * 24 + ["missing", "file"])) for cls in ("NORMAL", "PNEUMONIA")}
            layout[split] = {}
            for cls, kind in kinds.items():  # mostly a good image first, so that most folders load
                entries = draw(st.lists(st.sampled_from(("good",) * 3 + BAD_KINDS), max_size=3))
                layout[split][cls] = (kind, ["good"] * (draw(st.integers(0, 9)) < 8) + entries)
        elif draw(st.integers(0, 3)) == 0:
            layout[split] = "file"
    extra = draw(st.sets(st.sampled_from(["README.txt", "__MACOSX/x.jpeg",
                                          "Train/NORMAL/b.jpeg"])))
    return layout, sorted(extra), draw(st.sampled_from([1, 3])), draw(st.data())


def write_folder(root: Path, layout, extra, data) -> tuple[dict, set, bool]:
    """Write the folder; returns {good file: (label, level)}, the bad files a class folder holds, and
    whether the layout is one the loader must accept."""
    good, bad, n = {}, set(), 0
    valid = isinstance(layout.get("train"), dict)
    for split, classes in layout.items():
        if classes == "file":
            (root / split).write_text("not a folder")
            valid = False
            continue
        (root / split).mkdir(parents=True)
        for label, (cls, (kind, entries)) in enumerate(classes.items()):
            folder = root / split / cls
            if kind != "dir":
                valid = False
                if kind == "file":
                    folder.write_text("not a folder")
                continue
            folder.mkdir()
            has_image = False
            for entry in entries:
                n += 1
                stem = f"IM-{n:04d}-0001" if cls == "NORMAL" else f"person{n}_bacteria_{n}"
                rel = f"{split}/{cls}/{stem}"
                if entry == "good":  # unique level and size, so no two files are byte duplicates
                    mode = data.draw(st.sampled_from(sorted(set(NATIVE) - {"1"})))
                    fmt, ext = data.draw(st.sampled_from(NATIVE[mode])), data.draw(st.sampled_from(EXTENSIONS))
                    level = (37 * n) % 256
                    (root / f"{rel}{ext}").write_bytes(encode(constant_image(mode, level, (5 + n, 7)), fmt))
                    good[f"{rel}{ext}"] = (label, level, 4 if fmt == "JPEG" else 1)
                    has_image = True
                    continue
                path = root / f"{rel}.jpeg"
                # Every bad file differs from every other (a byte duplicate would be dropped, not skipped).
                if entry == "truncated":
                    noise = np.random.default_rng(n).integers(0, 256, (30, 40, 3), dtype=np.uint8)
                    whole = encode(Image.fromarray(noise, "RGB"), data.draw(st.sampled_from(["JPEG", "PNG"])))
                    path.write_bytes(whole[: len(whole) // 2])
                elif entry == "random":
                    path.write_bytes(str(n).encode() + data.draw(st.binary(max_size=200)))
                elif entry == "empty":
                    path.write_bytes(b"")
                elif entry == "nan":
                    path = path.with_suffix(".tif")
                    path.write_bytes(encode(Image.fromarray(np.full((4, 4 + n), np.nan, np.float32), "F"), "TIFF"))
                elif entry == "text":
                    path = path.with_suffix(".txt")
                    path.write_text("notes")
                elif entry == "hidden":
                    path = folder / ".DS_Store"
                    path.write_bytes(b"\0\0\0\1Bud1")
                elif entry == "subdir":
                    path = folder / f"sub{n}"
                    path.mkdir()
                    (path / "IM-9999-0001.jpeg").write_bytes(encode(constant_image("L", 3, (8, 8)), "JPEG"))
                elif entry == "fifo":
                    os.mkfifo(path)  # reading it would block forever
                elif entry == "badname":
                    with open(os.fsencode(folder) + b"/IM-7777-\xff" + str(n).encode() + b".jpeg", "wb") as f:
                        f.write(encode(constant_image("L", 9, (8, 8)), "PNG"))
                    bad.add("badname")
                    continue
                elif entry == "broken_link":
                    path.symlink_to(root / "nowhere.jpeg")
                has_image |= entry in ("truncated", "random", "empty", "nan")  # image names, so not stray
                bad.add(path.relative_to(root).as_posix())
            valid = valid and has_image
    for rel in extra:
        with contextlib.suppress(OSError):  # e.g. train/OTHER when train is a file
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(encode(constant_image("L", 1, (6, 6)), "JPEG"))
    must_load = valid and any(not f.startswith("test/") for f in good)
    return good, bad, must_load


@settings(max_examples=20, deadline=None)
@given(case=folders())
def test_odd_folders_load_skip_or_fail_in_one_line(scratch, case):
    layout, extra, channels, data = case
    root = Path(tempfile.mkdtemp(dir=scratch)) / "xray"
    root.mkdir()
    good, bad, must_load = write_folder(root, layout, extra, data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = load_dataset(root, image_size=8, channels=channels, cache_dir=scratch / "cache", progress=False)
        except FlaxrayError as err:
            assert "\n" not in str(err) and str(err).strip()
            assert not must_load, f"a valid folder was refused: {err}"
            event(f"refused: {str(err)[:40]}")
            return
    assert all(issubclass(w.category, DataWarning) for w in caught), [str(w.message) for w in caught]
    loaded = {str(f): (split, i) for split in (ds.train, ds.val, ds.test) for i, f in enumerate(split.files)}
    assert set(loaded) == set(good), "a good image was dropped, or a bad one loaded"
    for rel, (label, level, tolerance) in good.items():
        split, i = loaded[rel]
        assert split.y[i] == label
        assert np.abs(split.x[i].astype(int) - level).max() <= tolerance, (rel, level, split.x[i].mean())
    skipped = {s["file"] for s in ds.summary["unreadable_skipped"]}
    messages = [str(w.message) for w in caught]
    for rel in bad - {"badname"}:
        assert rel in skipped and sum(rel in m for m in messages) == 1, (rel, skipped)
    if "badname" in bad:
        assert any("not valid UTF-8" in s["reason"] for s in ds.summary["unreadable_skipped"])


# ------------------------------------------------------------------------------------ absurd values

def not_a_number_in(low, high):
    """Floats that are not strictly between low and high (NaN and the infinities included)."""
    return st.floats(allow_nan=True, allow_infinity=True).filter(lambda x: not low < x < high)


@settings(max_examples=40, deadline=None)
@given(image_size=st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=3), st.booleans()),
       channels=st.one_of(st.integers(-2, 5), st.floats(), st.text(max_size=2), st.booleans()),
       val_fraction=st.one_of(st.floats(), st.text(max_size=3), st.none()),
       split_seed=st.one_of(st.integers(), st.floats(), st.none()))
def test_absurd_loader_arguments(image_size, channels, val_fraction, split_seed):
    try:
        ds = load_dataset(None, image_size=image_size, channels=channels, val_fraction=val_fraction,
                          split_seed=split_seed, progress=False)
    except FlaxrayError as err:
        assert "\n" not in str(err)
    else:
        assert ds.train.x.shape[1:] == (28, 28, int(channels))
        assert 0 < float(val_fraction) < 1


def test_cache_folder_that_is_a_file(chest_folder, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(FlaxrayError, match="cache folder") as err:
        load_dataset(chest_folder(), image_size=8, cache_dir=tmp_path / "file", progress=False)
    assert "\n" not in str(err.value)


def absurd_flags(tmp: Path):
    """(flag, values) pairs of which every one is invalid on its own."""
    a_file = tmp / "a_file"
    a_file.write_text("x")
    (tmp / "empty_dir").mkdir(exist_ok=True)
    below = lambda n: st.integers(max_value=n).map(str)  # noqa: E731
    return st.one_of(
        st.tuples(st.just("--epochs"), below(0).map(lambda v: [v])),
        st.tuples(st.just("--seeds"), st.one_of(below(0), st.integers(_cli.MAX_SEEDS + 1).map(str)).map(lambda v: [v])),
        st.tuples(st.just("--batch-size"), st.one_of(below(0), st.integers(10**5, 10**18).map(str)).map(lambda v: [v])),
        st.tuples(st.just("--lr"), st.lists(not_a_number_in(0, math.inf).map(repr), min_size=1, max_size=3)),
        st.tuples(st.just("--lr"), st.sampled_from(["1e-3", "0.001"]).map(lambda v: [v, "1e-3"])),  # twice
        st.tuples(st.just("--image-size"), st.integers().filter(lambda v: v != 28).map(lambda v: [str(v)])),
        st.tuples(st.just("--val-fraction"), not_a_number_in(0, 1).map(lambda v: [repr(v)])),
        st.tuples(st.just("--split-seed"), below(-1).map(lambda v: [v])),
        st.tuples(st.just("--first-seed"), st.one_of(below(-1), st.integers(2**31).map(str)).map(lambda v: [v])),
        st.tuples(st.just("--checkpoint-every"), below(-1).map(lambda v: [v])),
        st.tuples(st.just("--vary"), st.sampled_from(["luck", "init,colour", "dropout;order", "all"]).map(
            lambda v: [v])),
        st.tuples(st.just("--arch"), st.lists(st.sampled_from(["dense:", "dense:0", "dense:8@1.5", "dense:8@", "resnet",
                                                               "dense:8,,4", "dense:x"]), min_size=1, max_size=2)),
        st.tuples(st.just("--data"), st.sampled_from([str(tmp / "missing"), str(a_file), str(tmp / "empty_dir")]).map(
            lambda v: [v])),
        st.tuples(st.just("--out"), st.just([str(a_file)])),
        st.tuples(st.just("--channels"), st.sampled_from(["0", "2", "4", "rgb"]).map(lambda v: [v])),
        st.tuples(st.just("--epochs"), st.sampled_from(["2.5", "ten", ""]).map(lambda v: [v])),
    )


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_absurd_flags_fail_in_one_line(scratch, data):
    flags = data.draw(st.lists(absurd_flags(scratch), min_size=1, max_size=3))
    argv = ["--arch", "dense:4", "--seeds", "1", "--epochs", "1", "--batch-size", "64", "--channels", "1",
            "--no-progress", "--out", str(scratch / "out")]
    for flag, values in flags:
        argv += [flag, *values] if all(values) else [f"{flag}={values[0]}"]
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = seed_variance.main(argv)
        except SystemExit as exit:  # argparse: usage line + one error line
            code = exit.code
    errors = [line for line in stderr.getvalue().splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1, (argv, stderr.getvalue())
    assert "Traceback" not in stderr.getvalue()
    assert not (scratch / "out").exists(), "a refused run wrote its --out folder"
