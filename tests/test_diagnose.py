"""The per-seed diagnosis on synthetic curves of each kind, one kind per seed of one history."""

import dataclasses
import math

import numpy as np
import pytest

from flaxray.analysis import diagnose

E = 20
EPOCH = np.arange(1, E + 1, dtype=float)
NOISE = 0.004 * np.sin(1.7 * EPOCH)  # a little wobble, far below every threshold


def good():
    train = 0.2 + 0.5 * np.exp(-EPOCH / 3)
    return train, train + 0.03 + NOISE


def overfit_rise():
    train = 0.05 + 0.6 * np.exp(-EPOCH / 3)
    val = 0.3 + 0.004 * (EPOCH - 8) ** 2  # U-shaped: best at epoch 8, then rising
    return train, val + NOISE


def overfit_gap():
    train = 0.06 + 0.6 * np.exp(-EPOCH / 4)
    val = 0.3 + 0.3 * np.exp(-EPOCH / 2)  # flat, no rise: only the gap grows
    return train, val + NOISE


def underfit():
    return 0.62 + 0.3 * np.exp(-EPOCH) + NOISE, 0.58 + NOISE  # the hourglass at 0.5 dropout


def unstable():
    train, val = good()
    val = val.copy()
    val[[12, 16]] *= 1.8  # spikes late, none early
    return train, val


def shrinking_spikes():
    train, val = good()
    val = val.copy()
    val[[3, 5]] *= 2.5  # big early spikes ...
    val[[13]] *= 1.6  # ... a late one above spike_height but less than half as high: acceptable
    return train, val


def diverged():
    train, val = overfit_rise()
    train, val = train.copy(), val.copy()
    train[10:], val[10:] = np.nan, np.nan  # also overfit-shaped before: diverged wins
    return train, val


def exploded():
    train, val = good()
    val = val.copy()
    val[-1] = np.inf
    return train, val


KINDS = {"good": good, "overfit_rise": overfit_rise, "overfit_gap": overfit_gap, "underfit": underfit,
         "unstable": unstable, "shrinking_spikes": shrinking_spikes, "diverged": diverged, "exploded": exploded}
EXPECTED = {"good": "good", "overfit_rise": "overfit", "overfit_gap": "overfit", "underfit": "underfit",
            "unstable": "unstable", "shrinking_spikes": "good", "diverged": "diverged", "exploded": "diverged"}


def history(kinds=KINDS):
    pairs = [make() for make in kinds.values()]
    return {"loss": np.stack([p[0] for p in pairs]), "val_loss": np.stack([p[1] for p in pairs])}


def test_each_kind_of_curve_gets_its_label():
    labels, measures = diagnose.diagnose(history())
    assert dict(zip(KINDS, labels)) == EXPECTED
    for values in measures.values():
        assert np.shape(values) == (len(KINDS),)


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_seed_is_labelled_on_its_own(kind):
    # The label of one seed does not depend on the other seeds of the history.
    labels, _ = diagnose.diagnose(history({kind: KINDS[kind]}))
    assert list(labels) == [EXPECTED[kind]]


def test_thresholds_decide():
    h = history({"underfit": underfit, "unstable": unstable, "overfit_gap": overfit_gap})
    loose = dataclasses.replace(diagnose.THRESHOLDS, underfit_loss=2.0, spike_height=1.0, overfit_gap=0.9)
    assert list(diagnose.diagnose(h, thresholds=loose)[0]) == ["good", "good", "good"]
    # "High" train loss is relative to the class-prior loss: 0.62 is high against ln 2, not against 2.
    assert diagnose.diagnose(h)[0][0] == "underfit"
    assert diagnose.diagnose(h, baseline=2.0)[0][0] == "good"
    strict = dataclasses.replace(diagnose.THRESHOLDS, underfit_loss=0.95)
    assert diagnose.diagnose(h, thresholds=strict)[0][0] == "good"  # 0.62 / ln 2 = 0.89 < 0.95


def test_few_epochs_never_crash_and_never_call_spikes():
    h = {k: v[:, :2] for k, v in history().items()}
    labels, _ = diagnose.diagnose(h)
    assert "unstable" not in set(labels)
    assert labels[list(KINDS).index("underfit")] == "underfit"
    one = {k: v[:, :1] for k, v in history().items()}
    assert len(diagnose.diagnose(one)[0]) == len(KINDS)


def test_fractions_cover_every_label():
    f = diagnose.fractions(["good", "good", "overfit", "diverged"])
    assert list(f) == list(diagnose.LABELS)
    assert f == {"good": 0.5, "overfit": 0.25, "underfit": 0.0, "unstable": 0.0, "diverged": 0.25}


def test_baseline_loss_is_the_class_prior_loss():
    labels = np.array([1] * 74 + [0] * 26)
    entropy = -(0.74 * math.log(0.74) + 0.26 * math.log(0.26))
    assert diagnose.baseline_loss(labels) == pytest.approx(entropy)
    # Balanced weights make the best constant prediction 0.5: ln 2.
    weights = (len(labels) / (2 * 26), len(labels) / (2 * 74))
    assert diagnose.baseline_loss(labels, weights) == pytest.approx(math.log(2))
    assert diagnose.baseline_loss(np.ones(5)) == 0.0


def test_baseline_loss_for_three_classes_is_the_prior_entropy():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    prior = np.array([0.5, 0.3, 0.2])
    assert diagnose.baseline_loss(labels) == pytest.approx(-np.sum(prior * np.log(prior)))
    # Balanced weights (n / (C n_k)): the best constant is uniform, the loss ln 3.
    assert diagnose.baseline_loss(labels, 1 / (3 * prior)) == pytest.approx(math.log(3))
    # A class the split lacks (n_classes says it exists) adds nothing; the binary formula is unchanged.
    assert diagnose.baseline_loss(np.array([0, 0, 1, 1]), n_classes=3) == pytest.approx(math.log(2))
