"""The architecture search's default catalogue: every named dense stack of the notes, each distinct stack once."""

from __future__ import annotations

from flaxray.models import NOTES_STACKS, known_archs, parse_arch


def distinct_stacks(names) -> tuple[list[str], dict[str, str]]:
    """`names` without the ones whose stack equals another's: (kept, {dropped: the same stack's kept name}).

    `pyramid_d02_plain` is `pyramid_plain` (without dropout the rate is gone): training both
    gives bit-identical curves, so the default catalogue keeps the shorter name.
    """
    kept, same = {}, {}
    for name in sorted(names, key=lambda n: (len(n), n)):
        blocks = parse_arch(name)
        if name in kept:
            continue
        if blocks in kept.values():
            same[name] = next(k for k, v in kept.items() if v == blocks)
        else:
            kept[name] = blocks
    return [n for n in names if n in kept], same


# Every named dense stack of the notes, with and without BatchNorm/Dropout (`NAME_plain`), each
# distinct stack once: 16 names, 14 stacks (SAME_STACK lists the two left out). The registry's CNNs
# are chosen with --arch: on a CPU they cost several times a dense stack per epoch.
DENSE_NAMES = [n for n in known_archs() if n.removesuffix("_plain") in NOTES_STACKS]
DEFAULT_CATALOGUE, SAME_STACK = distinct_stacks(DENSE_NAMES)
DEFAULT_CATALOGUE = tuple(DEFAULT_CATALOGUE)
