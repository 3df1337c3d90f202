"""The one metric registry: every metric's name, label, direction, formula and class counts (plain numpy).

The trainer does not keep every prediction: per epoch and split it accumulates sufficient
statistics on the device, for any number of leading (seed, epoch) axes:

- binary (2 classes, one logit, P(class 1)): `{"loss_sum", "count", "pos_hist", "neg_hist"}`, two
  histograms of P(class 1) over `NUM_BINS` equal bins of [0, 1], one per true class;
- C >= 3 classes (softmax): `{"loss_sum", "count", "hist", "confusion"}`, `hist[..., k, c, b]` the
  samples of true class c whose predicted probability of class k fell in bin b, and
  `confusion[..., c, p]` the samples of true class c predicted (argmax) as p.

`REGISTRY` below lists every metric once. Curves (`curve_keys`), test metrics (`test_metrics`),
`flaxray.analysis.stats` summaries and rankings, tables, plots and reports all read it, so adding a metric
is one `Metric(...)` line here (tested: a metric added in a test shows up in the summary table).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from flaxray.errors import FlaxrayError

NUM_BINS = 200  # Keras's AUC uses 200 thresholds by default; 0.5 is a bin edge.
BINARY = ("0", "1")  # two classes whose names do not matter: binary metrics have no per-class keys
BINARY_KEYS = ("loss_sum", "count", "pos_hist", "neg_hist")
MULTICLASS_KEYS = ("loss_sum", "count", "hist", "confusion")


@dataclasses.dataclass(frozen=True)
class Metric:
    """One metric. `compute(counts)` maps a split's statistics (leading axes ...) to values (...), or
    (..., C) for a `per_class` metric, which becomes one metric `<name>_<CLASS>` per class.

    classes: "binary" (C == 2), "multiclass" (C >= 3) or "any". curve: recorded per epoch in a
    History (train and val) and so summarised and ranked; False: test-set only (specificity).
    headline: one of the few a report draws and tabulates per metric (all of them are summarised).
    """

    name: str
    label: str
    lower_is_better: bool
    compute: Callable[[Mapping[str, np.ndarray]], np.ndarray]
    classes: str = "any"
    curve: bool = True
    headline: bool = False
    per_class: bool = False

    def applies(self, n_classes: int) -> bool:
        return self.classes == "any" or (self.classes == "binary") == (n_classes == 2)


def _f64(x) -> np.ndarray:
    return np.asarray(x, np.float64)


def _binary(c) -> tuple[np.ndarray, ...]:
    """tp, fn, fp, tn at threshold 0.5 (a bin edge) from the two histograms."""
    pos_hist, neg_hist = _f64(c["pos_hist"]), _f64(c["neg_hist"])
    half = NUM_BINS // 2
    return (pos_hist[..., half:].sum(-1), pos_hist[..., :half].sum(-1),
            neg_hist[..., half:].sum(-1), neg_hist[..., :half].sum(-1))


def _rate(num, den) -> np.ndarray:
    """num / den, 0 where den is 0 (Keras reports an undefined precision or recall as 0)."""
    return np.where(den > 0, num / np.maximum(den, 1), 0.0)


def mann_whitney_auc(pos_hist, neg_hist) -> np.ndarray:
    """P(a positive's bin > a negative's), pairs in the same bin counted half; NaN when a side is empty."""
    pos_hist, neg_hist = _f64(pos_hist), _f64(neg_hist)
    half = NUM_BINS // 2  # summed in two halves, as tp + fn: the same float64 operations as before the registry
    n_pos = pos_hist[..., half:].sum(-1) + pos_hist[..., :half].sum(-1)
    n_neg = neg_hist[..., half:].sum(-1) + neg_hist[..., :half].sum(-1)
    neg_below = np.cumsum(neg_hist, axis=-1) - neg_hist
    ordered_pairs = (pos_hist * (neg_below + 0.5 * neg_hist)).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), ordered_pairs / (n_pos * n_neg), np.nan)


def _loss(c):
    with np.errstate(invalid="ignore", divide="ignore"):
        return _f64(c["loss_sum"]) / _f64(c["count"])


def _binary_accuracy(c):
    tp, fn, fp, tn = _binary(c)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (tp + tn) / ((tp + fn) + (fp + tn))


def _precision(c):
    tp, _, fp, _ = _binary(c)
    return _rate(tp, tp + fp)


def _recall(c):
    tp, fn, _, _ = _binary(c)
    return _rate(tp, tp + fn)


def _specificity(c):
    _, _, fp, tn = _binary(c)
    return _rate(tn, fp + tn)


def _binary_auc(c):
    return mann_whitney_auc(c["pos_hist"], c["neg_hist"])


def _diagonal(confusion):
    return np.diagonal(confusion, axis1=-2, axis2=-1)


def _multiclass_accuracy(c):
    conf = _f64(c["confusion"])
    with np.errstate(invalid="ignore", divide="ignore"):
        return _diagonal(conf).sum(-1) / conf.sum((-2, -1))


def _ovr_auc(c):
    """Macro one-vs-rest AUC: the mean over classes k of the AUC of P(k) for class k against the rest.

    NaN when a class is absent from the split, as the binary AUC is (its AUC is undefined).
    """
    hist = _f64(c["hist"])  # (..., k, c, b)
    n = hist.shape[-2]
    own = hist[..., np.arange(n), np.arange(n), :]  # (..., k, b): class k's own samples
    rest = hist.sum(-2) - own  # (..., k, b): every other class's samples, binned by P(k)
    return mann_whitney_auc(own, rest).mean(-1)


def _class_recall(c):
    conf = _f64(c["confusion"])
    return _rate(_diagonal(conf), conf.sum(-1))


# Order matters: it is the column order of curves.csv, tables and reports (binary: today's order).
REGISTRY: tuple[Metric, ...] = (
    Metric("loss", "loss", True, _loss, headline=True),
    Metric("accuracy", "accuracy", False, _binary_accuracy, classes="binary", headline=True),
    Metric("accuracy", "accuracy", False, _multiclass_accuracy, classes="multiclass", headline=True),
    Metric("precision", "precision", False, _precision, classes="binary"),
    Metric("recall", "recall (sensitivity)", False, _recall, classes="binary"),
    Metric("specificity", "specificity", False, _specificity, classes="binary", curve=False),
    Metric("auc", "AUC", False, _binary_auc, classes="binary", headline=True),
    Metric("auc", "AUC", False, _ovr_auc, classes="multiclass", headline=True),  # macro one-vs-rest
    Metric("recall", "recall", False, _class_recall, classes="multiclass", per_class=True),
)




def _check_registry(registry: Sequence[Metric]) -> None:
    """One name, one meaning: a name that is two metrics (one binary, one multi-class) keeps its label and
    direction, so a summary key says the same whatever the class count; no class count sees a name twice."""
    for m in registry:
        same = [o for o in registry if o.name == m.name and o.per_class == m.per_class]
        if any((o.label, o.lower_is_better) != (m.label, m.lower_is_better) for o in same):
            raise ValueError(f"metric {m.name!r}: every entry of that name needs the same label and direction")
        for n_classes in (2, 3):
            if sum(o.applies(n_classes) and o.curve == m.curve for o in same) > 1:
                raise ValueError(f"metric {m.name!r} is registered twice for {n_classes} classes")


_check_registry(REGISTRY)


@dataclasses.dataclass(frozen=True)
class Entry:
    """A registry metric for one class list: its key (`recall_CAT` for a per-class one) and its column."""

    name: str
    label: str
    lower_is_better: bool
    metric: Metric
    column: int | None = None  # the class of a per-class metric


def entries(class_names: Sequence[str], *, test: bool = False) -> tuple[Entry, ...]:
    """The metrics of a class list, in registry order: the History curves, or (`test`) a test evaluation."""
    class_names = tuple(class_names)
    if len(class_names) < 2:
        raise FlaxrayError(f"metrics need 2 or more classes, got {list(class_names)}")
    out = []
    for m in REGISTRY:
        if not m.applies(len(class_names)) or not (m.curve or test):
            continue
        if m.per_class:
            out += [Entry(f"{m.name}_{c}", f"{m.label} {c}", m.lower_is_better, m, i) for i, c in enumerate(class_names)]
        else:
            out.append(Entry(m.name, m.label, m.lower_is_better, m))
    return tuple(out)


def find(name: str) -> Entry | None:
    """The registry entry a metric key names (`auc`, `recall_CAT`; no `val_` prefix), whatever the class count,
    or None. A per-class key is matched by its prefix, so this needs no class list."""
    for m in REGISTRY:
        if m.per_class and name.startswith(m.name + "_"):
            cls = name[len(m.name) + 1:]
            return Entry(name, f"{m.label} {cls}", m.lower_is_better, m)
        if not m.per_class and name == m.name:
            return Entry(name, m.label, m.lower_is_better, m)
    return None


def label(name: str) -> str:
    """A metric key's label ("recall (sensitivity)", "AUC"); an unknown key with '_' as spaces."""
    e = find(name)
    return e.label if e is not None else name.replace("_", " ")


def lower_is_better(name: str) -> bool:
    """Whether a lower value of metric `name` is better (loss); unknown names count as scores."""
    e = find(name)
    return e.lower_is_better if e is not None else False


def curve_keys(class_names: Sequence[str]) -> tuple[str, ...]:
    """The History keys, train then val, in curves.csv order (binary: loss, accuracy, precision, recall, auc)."""
    names = [e.name for e in entries(class_names)]
    return tuple(names) + tuple(f"val_{n}" for n in names)


def test_metrics(class_names: Sequence[str]) -> tuple[str, ...]:
    """The metrics of a test-set evaluation (binary: loss, accuracy, precision, recall, specificity, auc)."""
    return tuple(e.name for e in entries(class_names, test=True))


test_metrics.__test__ = False  # not a pytest test, whatever collects it


def _check(counts: Mapping[str, np.ndarray], class_names: Sequence[str]) -> None:
    want = BINARY_KEYS if len(class_names) == 2 else MULTICLASS_KEYS
    missing = [k for k in want if k not in counts]
    if missing:
        raise FlaxrayError(f"statistics for {len(class_names)} classes need {', '.join(want)}; "
                           f"missing {', '.join(missing)}")


def compute(counts: Mapping[str, np.ndarray], class_names: Sequence[str], *,
            test: bool = False) -> dict[str, np.ndarray]:
    """Every metric of `entries(class_names, test=test)` from one split's statistics: {key: values (...)}."""
    _check(counts, class_names)
    out, cache = {}, {}
    for e in entries(class_names, test=test):
        if e.metric not in cache:  # a per-class metric is computed once for all its classes
            cache[e.metric] = e.metric.compute(counts)
        values = cache[e.metric]
        out[e.name] = values if e.column is None else values[..., e.column]
    return out


def binary_metrics(loss_sum, count, pos_hist, neg_hist) -> dict[str, np.ndarray]:
    """loss, accuracy, precision, recall (sensitivity), specificity (threshold 0.5) and AUC from binary counts.

    `pos_hist[..., b]` counts positives whose predicted probability fell in bin b, `neg_hist` the
    negatives. Precision, recall and specificity are 0 when undefined (as Keras reports them); AUC
    is NaN when a class is absent, and counts pairs in the same bin as half-ordered (Mann-Whitney).
    """
    return compute({"loss_sum": loss_sum, "count": count, "pos_hist": pos_hist, "neg_hist": neg_hist}, BINARY,
                   test=True)


def history_from_counts(counts: Mapping[str, Mapping[str, np.ndarray]],
                        class_names: Sequence[str]) -> dict[str, np.ndarray]:
    """{"train": statistics, "val": statistics} with (seed, epoch) leading axes -> a Keras-style History.

    Keys as Keras names them, in `curve_keys(class_names)` order: `loss`, `accuracy`, ... for train,
    `val_loss`, `val_accuracy`, ... for val (binary: exactly the five of today's curves.csv).
    """
    history = {}
    for split, prefix in (("train", ""), ("val", "val_")):
        for name, values in compute(counts[split], class_names).items():
            history[prefix + name] = values
    return history


def mask_diverged(history: dict[str, np.ndarray], diverged) -> dict[str, np.ndarray]:
    """NaN from the epoch each seed diverged in (`diverged[s]`, 1-based; 0 = never) onwards.

    A diverged seed stopped updating, so its later numbers describe a frozen model, not training:
    NaN keeps them out of means and bands (the stats count them as non-finite seeds).
    """
    diverged = np.asarray(diverged)
    out = {}
    for key, values in history.items():
        epochs = np.arange(1, values.shape[1] + 1)
        dead = (diverged[:, None] > 0) & (epochs[None, :] >= diverged[:, None])
        out[key] = np.where(dead, np.nan, values)
    return out
