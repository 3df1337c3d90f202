"""TensorFlow Datasets builder for a Kaggle-layout chest X-ray folder (no TensorFlow needed).

:class:`FlaxrayChestXray` takes the folder as its *manual dir*, decodes every image with PIL,
resizes it to one square size inside ``_generate_examples`` and writes ``array_record`` files,
which ``builder.as_data_source()`` reads back with random access and without TensorFlow.
Images are stored as raw ``uint8`` bytes (``tfds.features.Tensor(..., encoding="bytes")``):
it is several times faster to write and read than ``tfds.features.Image`` (PNG), and
``array_record`` compresses it on disk to about the same size.

Byte-identical files (md5) are dropped before decoding, keeping one copy per group and
preferring the copy in ``test``, then ``val``, then ``train`` (so test is never the one altered
and no image is in two splits). Files that cannot be decoded are skipped and recorded in
:attr:`FlaxrayChestXray.unreadable` (or, with ``strict=True``, raise :class:`FlaxrayError`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import itertools
import os
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from flaxray.data.decode import decode_entry
from flaxray.data.folder import CLASSES, SPLITS, FileEntry, FolderScan, group_id, patient_id, scan_folder
from flaxray.errors import FlaxrayError

BUILDER_VERSION = "1.0.0"
# Key and file name of the one dummy example written for a split whose files all failed to
# decode (TFDS cannot write an empty split); the reader drops it.
PLACEHOLDER_KEY = "__flaxray_empty_split__"

CITATION = """\
@article{kermany2018identifying,
  title   = {Identifying Medical Diagnoses and Treatable Diseases by Image-Based Deep Learning},
  author  = {Kermany, Daniel S. and Goldbaum, Michael and Cai, Wenjia and Valentim, Carolina C. S.
             and Liang, Huiying and Baxter, Sally L. and McKeown, Alex and Yang, Ge and Wu, Xiaokang
             and Yan, Fangbing and Dong, Justin and Prasadha, Made K. and Pei, Jacqueline and
             Ting, Magdalene Y. L. and Zhu, Jie and Li, Christina and Hewett, Sierra and Dong, Jason
             and Ziyar, Ian and Shi, Alexander and Zhang, Runze and Zheng, Lianghong and Hou, Rui
             and Shi, William and Fu, Xin and Duan, Yaou and Huu, Viet A. N. and Wen, Cindy and
             Zhang, Edward D. and Zhang, Charlotte L. and Li, Oulan and Wang, Xiaobo and
             Singer, Michael A. and Sun, Xiaodong and Xu, Jie and Tafreshi, Ali and Lewis, M. Anthony
             and Xia, Huimin and Zhang, Kang},
  journal = {Cell},
  volume  = {172},
  number  = {5},
  pages   = {1122--1131.e9},
  year    = {2018},
  doi     = {10.1016/j.cell.2018.02.010}
}"""

def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _dataset_info(builder, what: str, **extra) -> tfds.core.DatasetInfo:
    """The one feature layout of every folder builder: uint8 image, class label, file and patient."""
    shape = (builder.image_size, builder.image_size, builder.channels)
    return tfds.core.DatasetInfo(
        builder=builder,
        description=f"{what}, resized to {shape} uint8 with PIL bilinear (aspect ratio not kept).",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=shape, dtype=np.uint8, encoding=tfds.features.Encoding.BYTES),
            "label": tfds.features.ClassLabel(names=list(builder.classes)),
            "file": tfds.features.Text(),
            "patient": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        disable_shuffling=True,  # keep the sorted file order
        **extra,
    )


class FlaxrayChestXray(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A Kaggle-layout ``{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg`` folder as a TFDS dataset.

    Use it with the folder as manual dir and ``file_format="array_record"``::

        b = FlaxrayChestXray(image_size=180, channels=3, data_dir=..., file_format="array_record")
        b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=folder))
        b.as_data_source()["train"][0]  # {"image": (180, 180, 3) uint8, "label", "file", "patient"}

    Splits are the official ones present in the folder. Each example keeps ``file`` (path
    relative to the folder), ``label`` (0 NORMAL, 1 PNEUMONIA) and ``patient``. After
    preparing, :attr:`duplicates` and :attr:`unreadable` list what was dropped.

    It is not put in TFDS's global registry (``tfds.builder(name)`` could not construct it
    anyway: it needs ``image_size`` and ``channels``), so re-importing the module is harmless.
    """

    name = "flaxray_chest_xray"
    KAGGLE = True  # scan a folder given without `scan` as the Kaggle layout

    VERSION = tfds.core.Version(BUILDER_VERSION)
    RELEASE_NOTES = {BUILDER_VERSION: "First version."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Pass a folder laid out as {train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg (the Kaggle "
        "chest_xray layout) as the manual dir, e.g. flaxray.data.load_dataset(path)."
    )

    def __init__(self, *, image_size: int, channels: int, scan: FolderScan | None = None,
                 strict: bool = False, pbar=None, **kwargs):
        self.classes = scan.classes if scan is not None else CLASSES
        self.image_size = int(image_size)
        self.channels = int(channels)
        self._scan = scan
        self._strict = bool(strict)
        self._pbar = pbar
        self.duplicates: list[dict] = []  # [{"file", "duplicate_of"}]
        self.unreadable: list[dict] = []  # [{"file", "reason"}] found while decoding
        self.examples: dict[str, list[str]] = {}  # split -> files written, in TFDS key order
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return _dataset_info(self, "Pediatric chest X-rays, NORMAL vs PNEUMONIA, read from a Kaggle-layout folder",
                             homepage="https://data.mendeley.com/datasets/rscbjbr9sj/2", citation=CITATION)

    # TFDS prints these two with termcolor on stdout; the caller shows its own progress bar.
    def _log_download_bytes(self) -> None:
        pass

    def _log_download_done(self) -> None:
        pass

    def _skip(self, root: Path, rel: str, reason: str) -> None:
        if self._strict:
            raise FlaxrayError(f"unreadable image {root / rel}: {reason} (strict=True)")
        self.unreadable.append({"file": rel, "reason": reason})

    def _split_generators(self, dl_manager):
        root = Path(dl_manager.manual_dir)
        scan = self._scan if self._scan is not None else scan_folder(root, None if self.KAGGLE else self.classes)
        rank = {s: i for i, s in enumerate(("test", "val", "train"))}
        ordered = sorted(scan.images, key=lambda e: (rank[e.split], e.rel))
        candidates = [e for e in ordered if e.size > 0]  # empty files are reported as unreadable
        with concurrent.futures.ThreadPoolExecutor(_workers()) as ex:
            digests = list(ex.map(lambda e: self._safe_md5(root / e.rel), candidates))
        first: dict[str, str] = {}
        dropped: set[str] = set()
        for e, digest in zip(candidates, digests):
            if digest is None:
                continue
            if digest in first:
                self.duplicates.append({"file": e.rel, "duplicate_of": first[digest]})
                dropped.add(e.rel)
            else:
                first[digest] = e.rel
        self.duplicates.sort(key=lambda d: d["file"])
        kept = [e for e in scan.images if e.rel not in dropped]
        if self._pbar is not None:
            self._pbar.total = len(kept)
            self._pbar.refresh()
        return {split: self._generate_examples(root, [e for e in kept if e.split == split], split)
                for split in SPLITS if split in scan.splits}

    @staticmethod
    def _safe_md5(path: Path):
        try:
            return _md5(path)
        except OSError:
            return None  # reported when decoding fails

    def _generate_examples(self, root: Path, entries: list[FileEntry], split: str):
        size, ch = self.image_size, self.channels
        written = self.examples.setdefault(split, [])
        n_yielded = 0
        window = 4 * _workers() + 16  # decodes kept in flight while TFDS serialises earlier examples
        with concurrent.futures.ThreadPoolExecutor(_workers()) as ex:
            pending = collections.deque()
            todo = iter(entries)
            for e in itertools.islice(todo, window):
                pending.append((e, ex.submit(decode_entry, root, e, size, ch)))
            while pending:
                e, fut = pending.popleft()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append((nxt, ex.submit(decode_entry, root, nxt, size, ch)))
                arr, reason = fut.result()
                if self._pbar is not None:
                    self._pbar.update(1)
                if reason is not None:
                    try:
                        self._skip(root, e.rel, reason)
                    except FlaxrayError:  # strict=True: don't decode the rest
                        for _, f in pending:
                            f.cancel()
                        raise
                    continue
                n_yielded += 1
                written.append(e.rel)
                yield e.rel, {"image": arr, "label": e.label, "file": e.rel, "patient": self._group(e.rel)}
        if n_yielded == 0:
            yield PLACEHOLDER_KEY, {"image": np.zeros((size, size, ch), np.uint8), "label": 0,
                                    "file": "", "patient": ""}


    @staticmethod
    def _group(rel: str) -> str:
        return patient_id(rel)[0]


class FlaxrayImageFolder(FlaxrayChestXray, skip_registration=True):
    """Any ``{train,val,test}/{CLASS}/*`` folder (two or more classes, from ``scan.classes``):
    the same decoding, de-duplication and cache as :class:`FlaxrayChestXray`, with the folder's
    class names as the ClassLabel and, per image, its Kaggle patient or else the image itself
    as ``patient`` (see :func:`flaxray.data.folder.group_id`)."""

    name = "flaxray_image_folder"
    KAGGLE = False
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("Pass a folder laid out as {train,val,test}/{CLASS}/* as the manual dir, "
                                    "e.g. flaxray.data.load_dataset(path).")

    def _info(self) -> tfds.core.DatasetInfo:
        return _dataset_info(self, f"Images of the classes {', '.join(self.classes)} read from a class-folder layout")

    @staticmethod
    def _group(rel: str) -> str:
        return group_id(rel)[0]
