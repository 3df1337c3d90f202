"""The flags every study shares: data, seeds and training, the margin, output (argparse only)."""

from __future__ import annotations

import argparse

from flaxray.core import settings
from flaxray.core.config import DTYPES
from flaxray.core.randomness import FLOOR, SOURCES, SPLIT
from flaxray.runtime.checkpoint import DEFAULT_EVERY
from studies import _recipe

EMBEDDED = "embedded"  # --data's name of the default data, so that it can be one of several


def add_data_args(p: argparse.ArgumentParser, *, several: bool = False) -> None:
    p.add_argument("--data", default=None, metavar="PATH", nargs="+" if several else None,
                   action=_OneOrMore if several else "store",
                   help="a folder in the Kaggle layout {train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg (patients and "
                   "duplicates handled), any folder {train,val,test}/{CLASS}/* with 2+ classes, an .npz of arrays "
                   "(x_train, y_train, ...) or tfds:NAME (a TensorFlow Datasets set already prepared in --data-dir); "
                   "'embedded' names the default, the embedded 28x28 chest X-rays"
                   + ("; several (--data A B C): every arch is trained on each, a study of its own in "
                      "OUT/datasets/NAME/ (NAME: the folder's or file's name, NAME of tfds:NAME), and OUT/report.md "
                      "compares the archs across them: per-data-set min-max normalised final val loss, IQM, mean, "
                      "median, optimality gap with stratified bootstrap CIs, P(improvement) and performance profiles "
                      "(docs/datasets.md); the other data flags apply to each" if several else ""))
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="TensorFlow Datasets' data_dir for --data tfds:NAME (nothing is downloaded)")
    p.add_argument("--image-size", type=int, default=None,
                   help="images are resized to SIZE x SIZE (default: 180 for an image folder, 28 for the embedded data; "
                   "an .npz, arrays and a TFDS set keep their own size unless given)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=3, help="1 = grey, 3 = RGB as in the notes")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of train carved out as val, by patient")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the patient split (same for every model seed)")
    p.add_argument("--strict", action="store_true", help="unreadable images are fatal instead of skipped")
    p.add_argument("--cache-dir", default=None,
                   help="where prepared data is cached (default: $FLAXRAY_CACHE or ~/.cache/flaxray)")


class _OneOrMore(argparse.Action):
    """--data A B C as a list, --data A as the one path it always was (recorded as before)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values[0] if len(values) == 1 else list(values))


def add_training_args(p: argparse.ArgumentParser, *, seeds=16, epochs=20) -> None:
    p.add_argument("--seeds", type=int, default=seeds, help="number of seeds trained together")
    p.add_argument("--first-seed", type=int, default=0, help="seeds are K..K+N-1, so any seed can be re-run alone")
    p.add_argument("--epochs", type=int, default=epochs, help="epochs per seed")
    p.add_argument("--batch-size", type=int, default=32, help="training batch size per seed")
    for name, field in settings.FIELDS.items():  # every per-lane setting, each crossed with the seeds
        p.add_argument(field.flag, dest=name, type=field.parse, nargs="+", default=None, metavar=field.label.upper(),
                       help=field.help + settings.CROSSED.format(label=field.label))
    p.add_argument("--vary", default=",".join(SOURCES),
                   help="comma-separated sources of randomness that differ between seeds "
                   f"({', '.join(SOURCES)}; augment only with --augment); the others are shared by all seeds. 'none' shares all; '{FLOOR}' "
                   "nudges each seed's initial parameters by one ulp (with the rest shared: the noise floor). "
                   f"'{SPLIT}' (not in the default, which keeps the fixed split): each seed draws its own train/val "
                   "split of train+val, by patient and class as the fixed one, all of one size; each seed's val "
                   "metrics are on its own val set, test stays the official one (refused for data with its own "
                   "x_val and no groups)")
    p.add_argument("--class-weight", choices=("none", "balanced"), default="none",
                   help="'balanced' weighs each class's loss by n / (C n_class) for C classes, as sklearn and Keras users do")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="compute dtype of activations and matmuls; parameters and Adam's state stay float32")
    p.add_argument("--chunk", type=int, default=None, metavar="N",
                   help="train at most N seeds at once (default: as many as fit in the free device memory, "
                   "estimated; the seeds are split over every device of every process). Does not change the curves")
    p.add_argument("--strategy", default=None, metavar="auto|vmap|map|loop|K",
                   help="how the seeds of a chunk share a device: vmap batches them all into wider operations, map "
                   "runs them one after another inside one program, K batches groups of K seeds, the groups one "
                   "after another, loop calls the one-seed program seed after seed from the host; auto predicts "
                   "this study's epoch in each from timed runs here and, of the fastest within the noise, takes "
                   "vmap, map, groups, then loop, in that order, remembered per machine in the cache folder with "
                   "the epoch it then took (default: $FLAXRAY_STRATEGY, else auto). Recorded; a resume keeps the one "
                   "the run started with")
    _recipe.add_recipe_args(p)


def add_rope_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rope", type=float, default=None, metavar="DELTA",
                   help="a margin in final val loss (the ranking's value) that does not matter in practice: every "
                   "pair of archs, or of one arch's settings, is then better, worse, equivalent within +-DELTA or "
                   "undecided, from the CI of its Hodges-Lehmann shift (TOST at the study's confidence), in the "
                   "verdict, the report and the printout (default: no margin, no such verdicts)")


def add_output_args(p: argparse.ArgumentParser, *, out=None, out_help="output folder (default: a new folder under runs/)",
                    overwrite_help="start again in an --out that already holds a study (its results and "
                    "checkpoints are deleted)") -> None:
    p.add_argument("--out", default=out, metavar="DIR", help=out_help + "; a rerun into the same folder reuses "
                   "every arch trained there with the same settings and continues an unfinished one")
    p.add_argument("--overwrite", action="store_true", help=overwrite_help)
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="continue the stopped or killed study in DIR, with the flags recorded in DIR/run.json, to "
                   "the curves an uninterrupted run gives; other flags given with it must equal the recorded ones "
                   "(except --no-progress, --checkpoint-every and --cache-dir)")
    p.add_argument("--replay", default=None, metavar="DIR",
                   help="train --seed K of the finished study in DIR again, in the program shape it was trained in "
                   "(its chunk of the vmapped seeds: the cost of one chunk), and check its curves and parameters "
                   "against the recorded ones, bit for bit; exit 1 if they differ")
    p.add_argument("--seed", type=int, default=None, metavar="K", help="the seed --replay trains again")
    p.add_argument("--checkpoint-every", default=DEFAULT_EVERY, metavar="N|TIME",
                   help="save every seed's training state in the --out folder's groups/*/checkpoints/ every N epochs "
                   "or every TIME of training (90s, 5min, 1h), and after the last epoch and on Ctrl-C; a kill loses "
                   "at most that much. 0: never, then --resume starts over")
    p.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="also write TensorBoard event files into DIR when the study is done: a run per seed and the "
                   "mean and CI band per arch (needs the [tensorboard] extra; `python -m studies.tensorboard` does it "
                   "for a finished study)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
