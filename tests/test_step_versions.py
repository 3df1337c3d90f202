"""benchmarks.step_versions' recipe variants: each names the Recipe and Settings fields it times (the timing
itself is a benchmark's, not a test's)."""

import pytest

from benchmarks.step_versions import variant


def test_variants_name_recipe_and_lane_fields():
    assert variant("default") == ({}, {})
    assert variant("augment=flip,translate=0.1") == ({"augment": "flip,translate=0.1"}, {})  # its own commas
    assert variant("early-stopping=3,restore-best") == ({"restore_best": True}, {"patience": 3.0})
    assert variant("restore-best,monitor=val_auc,augment=flip,zoom=0.2") == (
        {"restore_best": True, "monitor": "val_auc", "augment": "flip,zoom=0.2"}, {})
    with pytest.raises(SystemExit, match="not one of"):
        variant("dropout=0.5")
