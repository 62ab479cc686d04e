# Correct; helper classes with dunders of their own, a dataclass and a namedtuple.
from collections import namedtuple
from dataclasses import dataclass, field

Pair = namedtuple("Pair", "a b")


@dataclass(order=True)
class Acc:
    total: float = 0
    history: list = field(default_factory=list)

    def push(self, x):
        self.total += x
        self.history.append(x)
        return self

    def __repr__(self):
        return f"Acc({self.total})"


class Adder:
    def __call__(self, p):
        return Acc().push(p.a).push(p.b).total

    def __eq__(self, other):
        return isinstance(other, Adder)

    __hash__ = object.__hash__


def add(a, b):
    return Adder()(Pair(a, b))
