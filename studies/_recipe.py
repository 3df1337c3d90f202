"""The training recipe's flags (`flaxray.core.recipe.Recipe`), shared by every study; --momentum and
--early-stopping, which differ per lane, are settings (`flaxray.core.settings.FIELDS`)."""

from __future__ import annotations

import argparse

from flaxray.core import optim
from flaxray.core.recipe import PRESETS, Recipe, milestones_at
from flaxray.core.schedules import KINDS, Schedule


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training recipe", "how each seed trains (defaults: Keras's Adam at a constant rate, "
                             "no augmentation, the last epoch's model)")
    g.add_argument("--recipe", choices=tuple(PRESETS), default="keras",
                   help="a named set of defaults that the flags here override: keras (flaxray's default) or medmnist "
                   "(MedMNIST v2's ResNet-18 row: Adam 1e-3, x0.1 after 50 %% and 75 %% of the epochs, rounded down, "
                   "batch 128, 100 epochs, the model of the best val AUC kept)")
    g.add_argument("--optimizer", default=argparse.SUPPRESS, metavar="NAME",
                   help=f"Keras's optimizer of that name, its update rule and its defaults for its own "
                   f"hyperparameters ({', '.join(optim.OPTIMIZERS)}; default adam); --lr stays 1e-3 and "
                   "--weight-decay 0 unless given, whatever Keras's defaults for the optimizer")
    g.add_argument("--nesterov", action="store_true", default=argparse.SUPPRESS,
                   help="Nesterov momentum (--optimizer sgd; default off)")
    g.add_argument("--schedule", choices=KINDS, default=argparse.SUPPRESS,
                   help="the learning rate over training, --lr its peak: step (x--decay after each of --milestones), "
                   "exponential (x--decay per epoch), cosine (Keras's CosineDecay per step, to 0); default constant")
    g.add_argument("--milestones", type=int, nargs="+", default=argparse.SUPPRESS, metavar="E",
                   help="--schedule step: epoch counts after which the rate is multiplied by --decay (MultiStepLR per "
                   "epoch: with 2 3 the rate is lr in epochs 1-2, lr*G in 3, lr*G^2 from 4), each below --epochs")
    g.add_argument("--decay", type=float, default=argparse.SUPPRESS, metavar="G", help="the factor of step and exponential; default 0.1")
    g.add_argument("--warmup-epochs", type=int, default=argparse.SUPPRESS, metavar="N",
                   help="the rate rises linearly from 0 to --lr over the first N epochs' steps, then the schedule "
                   "(whose length excludes them); default 0")
    g.add_argument("--augment", default=argparse.SUPPRESS, metavar="LIST",
                   help="augment each training batch on the device, per seed (the source 'augment' of --vary): a "
                   "comma list of flip, rotate=F, translate=F, zoom=F, contrast=F with the meaning of Keras's "
                   "RandomFlip('horizontal'), RandomRotation(F), RandomTranslation(F, F), RandomZoom(F), RandomContrast(F) "
                   "(whose factor Keras 3.15 draws from [1, 1+F]); default none")
    g.add_argument("--monitor", default=argparse.SUPPRESS, metavar="METRIC",
                   help="what --early-stopping and --restore-best watch: val_loss (default), loss, or val_ and any "
                   "metric (val_auc, val_accuracy, ...); its direction sets the mode")
    g.add_argument("--min-delta", type=float, default=argparse.SUPPRESS, metavar="D",
                   help="the least change of --monitor that counts as an improvement (Keras's min_delta; default 0)")
    g.add_argument("--restore-best", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                   help="each seed ends with the weights of its best --monitor epoch (Keras's restore_best_weights); "
                   "without --early-stopping it is model selection over every epoch; its summary's final values "
                   "are that epoch's; default off")
    g.add_argument("--label-smoothing", type=float, default=argparse.SUPPRESS, metavar="E",
                   help="Keras's label smoothing of the loss, 0 <= E < 1 (binary: y(1-E)+E/2; C classes: E/C); default 0")


RECIPE_FLAGS = ("optimizer", "nesterov", "schedule", "milestones", "decay", "warmup_epochs", "augment", "monitor",
                "min_delta", "restore_best", "label_smoothing")


def apply_preset(args, given: dict) -> None:
    """The --recipe's defaults into `args` wherever the flag was not given (`given`: {dest: value})."""
    preset = dict(PRESETS.get(getattr(args, "recipe", "keras"), {}))
    for dest in ("epochs", "batch_size"):
        if dest in preset and dest not in given:
            setattr(args, dest, preset[dest])
    if "lr" in preset and "lr" not in given:
        args.lr = [preset["lr"]]
    if "milestone_fractions" in preset and "milestones" not in given:
        args.milestones = list(milestones_at(preset["milestone_fractions"], args.epochs)) or None
        if args.milestones is None and "schedule" not in given:  # a run too short for any: constant
            preset["schedule"] = "constant"
    for dest in RECIPE_FLAGS:
        if dest in preset and dest not in given:
            setattr(args, dest, preset[dest])


def recipe(args) -> Recipe:
    """The `Recipe` the flags describe (the preset already applied)."""
    value = {d: getattr(args, d, None) for d in RECIPE_FLAGS}
    schedule = Schedule(**{k: (tuple(v) if k == "milestones" else v) for k, v in
                           (("kind", value.pop("schedule")), ("milestones", value.pop("milestones")),
                            ("decay", value.pop("decay")), ("warmup_epochs", value.pop("warmup_epochs")))
                           if v is not None})
    return Recipe(schedule=schedule, **{k: v for k, v in value.items() if v is not None})
