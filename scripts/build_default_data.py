#!/usr/bin/env python
"""Build flaxray's embedded default data: every kept image of the Kaggle chest_xray folder at 28x28
grayscale uint8 (like PneumoniaMNIST), through the same loader as ``load_dataset(folder)``.

    python scripts/build_default_data.py [--data ../shared/data/chest_xray] \
        [--out flaxray/data/default/chest_xray_28.npz]

The npz holds ``x`` (N, 28, 28) uint8, ``y`` (N,) int32 (1 = PNEUMONIA), ``files`` (N,) str (paths
relative to the data root, all official splits, before the patient split) and ``meta`` (a JSON
string: source, fingerprint, what was dropped and skipped).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flaxray.data import read_folder  # noqa: E402
from flaxray.errors import FlaxrayError  # noqa: E402

SIZE = 28
DESCRIPTION = ("28x28 grayscale, every image of the Kaggle chest_xray data set (Kermany, Zhang, Goldbaum "
               "et al., Cell 2018; Mendeley Data ChestXRay2017; CC BY 4.0), byte duplicates dropped")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(REPO / ".." / "shared" / "data" / "chest_xray"),
                    help="Kaggle-layout folder {train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg")
    ap.add_argument("--out", default=str(REPO / "flaxray" / "data" / "default" / "chest_xray_28.npz"))
    ap.add_argument("--cache-dir", default=None, help="TFDS cache (default $FLAXRAY_CACHE or ~/.cache/flaxray)")
    args = ap.parse_args(argv)
    try:
        arr, x = read_folder(args.data, image_size=SIZE, channels=1, strict=False, cache_dir=args.cache_dir)
    except FlaxrayError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts = {}
    for f, y in zip(arr.files, arr.y):
        split = f.split("/", 1)[0]
        c = counts.setdefault(split, {"NORMAL": 0, "PNEUMONIA": 0})
        c["PNEUMONIA" if y == 1 else "NORMAL"] += 1
    meta = {
        "description": DESCRIPTION,
        "image_size": SIZE,
        "channels": 1,
        "resize": "PIL BILINEAR to 28x28, aspect ratio not kept, after RGB->L (ITU-R 601-2 luma)",
        "built_with": "python scripts/build_default_data.py --data <Kaggle chest_xray folder>",
        "source_fingerprint": arr.fingerprint,
        "official_splits": counts,
        "duplicates_dropped": arr.duplicates_dropped,
        "unreadable_skipped": arr.unreadable_skipped,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, x=x[..., 0], y=arr.y.astype(np.int32), files=arr.files.astype(str),
                        meta=np.array(json.dumps(meta)))
    print(f"wrote {out}: {len(arr.y)} images {x.shape[1:3]}, {out.stat().st_size / 1e6:.2f} MB, "
          f"{len(arr.duplicates_dropped)} duplicates dropped, {len(arr.unreadable_skipped)} unreadable skipped; "
          f"per official split {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
