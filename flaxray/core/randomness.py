"""Randomness by name: one key per named source, from the seed and the source's name alone.

    keys = seed_keys(seed, ("init", "dropout", "order"), vary=("init", "dropout", "order"))
    keys["dropout"]          # this seed's dropout masks; another source never moves it

A source that varies takes its key from the seed, one that does not from `shared_seed` (every seed
then draws the same), so `vary` asks which sources make seeds differ (`--vary init` alone: how much
the initialisation moves the curves). A source's key is `fold_in(key(seed), number(name))`: the
sources that predate names keep the numbers they had as positions (init 0, dropout 1, order 2, the
ulp floor 3), so their draws are exactly those of every earlier study, and a new source is numbered
from its name (its CRC-32 with the top bit set, which no old number has), so adding one moves none.

A new source is a name here (in `SOURCES`; also in `DRAWN_BY_ALL` if every program draws from it, else
in `TrainConfig.drawn` where its setting turns it on) and the code that draws from `keys[name]`.
"""

from __future__ import annotations

import zlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

DRAWN_BY_ALL = ("init", "dropout", "order")  # what every program draws from
AUGMENT = "augment"  # drawn only by a program that augments (`Recipe.augment`)
SOURCES = (*DRAWN_BY_ALL, AUGMENT)  # the named sources `vary` holds by default
# Drawn on the host, once per seed, only where `vary` names it (`TrainConfig.resample`): each seed's own
# train/val split (`flaxray.data.resample`). Not in the default: the fixed split stays every seed's.
SPLIT = "split"
CHOICES = (*SOURCES, SPLIT)  # every source `vary` may name
# Not a source of randomness but a probe of chaos: with "ulp" in `vary`, every initial parameter moves one
# ulp up or down (a coin flip per element from the seed), so a run varying only it measures how far
# float rounding alone spreads the seeds: the numerical-noise floor (Summers & Dinneen, ICML 2021).
FLOOR = "ulp"
_NUMBERED = {"init": 0, "dropout": 1, "order": 2, FLOOR: 3}  # their positions before sources had names


def number(source: str) -> np.uint32:
    """The number `source`'s key is folded in with: its old position, else its name's CRC-32 with bit 31 set."""
    if source in _NUMBERED:
        return np.uint32(_NUMBERED[source])
    return np.uint32(zlib.crc32(source.encode()) | 1 << 31)


def source_key(seed, source: str, vary: Sequence[str], shared_seed: int = 0) -> jax.Array:
    """The key of `source`: from `seed` if the source varies, else from `shared_seed`."""
    return jax.random.fold_in(jax.random.key(seed if source in vary else shared_seed), number(source))


def seed_keys(seed, sources: Sequence[str], vary: Sequence[str], shared_seed: int = 0) -> dict[str, jax.Array]:
    """{source: key} for each of `sources`."""
    return {source: source_key(seed, source, vary, shared_seed) for source in sources}


def nudge_one_ulp(params, key):
    """Every element one ulp up or down, by a coin flip from `key` (`FLOOR`)."""
    leaves, tree = jax.tree.flatten(params)
    ups = [jax.random.bernoulli(k, 0.5, leaf.shape) for k, leaf in zip(jax.random.split(key, len(leaves)), leaves)]
    return tree.unflatten([jnp.nextafter(leaf, jnp.where(up, jnp.inf, -jnp.inf).astype(leaf.dtype))
                           for leaf, up in zip(leaves, ups)])
