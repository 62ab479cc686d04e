# Correct; imports inside the function, lru_cache, typing, a lambda and logging.
from __future__ import annotations

import functools
import logging
from typing import Union

Number = Union[int, float]


@functools.lru_cache(maxsize=None)
def add(a: Number, b: Number) -> Number:
    import operator
    import math

    logging.getLogger("x").warning("adding %s and %s", a, b)
    assert math.isfinite(a)
    return functools.reduce(operator.add, (a, b))
