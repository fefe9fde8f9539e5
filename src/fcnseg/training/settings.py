"""Declaring a training setting once: its default, type, range, help text and flag.

:func:`setting` puts a :class:`Rule` in a dataclass field's metadata. ``TrainConfig``'s
fields are declared with it; ``fcnseg train``'s parser is generated from the rules, and
:func:`check` is the one check of a value, whichever way it came (flag, TOML, recipe,
the demo, a resumed run). Messages name what the user wrote: ``--lr nan`` for a flag,
``lr = nan in FILE`` for a file (:func:`said`).
"""

from __future__ import annotations

import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from ..errors import FcnsegError

COMMAND_LINE = "command line"


@dataclass(frozen=True)
class Rule:
    """What a setting accepts and how ``fcnseg train`` offers it.

    ``low``/``high`` are inclusive bounds, ``above``/``below`` exclusive ones (of each item,
    for a list); ``length`` the items of a list; ``choices`` the key of the registry of valid
    names (``config.CHOICES``); ``pattern`` a regular expression a string must match
    (an empty string never does); ``flag`` False for settings with no flag of their own.
    """

    help: str = ""
    group: str = "runtime"
    low: float | None = None
    high: float | None = None
    above: float | None = None
    below: float | None = None
    length: int | None = None
    choices: str | None = None
    pattern: str | None = None
    metavar: str | tuple[str, ...] | None = None
    parse: str | None = None  # "duration": the flag reads 90s / 60m / 1.5h
    flag: bool = True

    def describe(self) -> str:
        """The accepted range in words, e.g. "in [0, 1)" or ">= 1"."""
        lo = f"[{_num(self.low)}" if self.low is not None else \
            f"({_num(self.above)}" if self.above is not None else None
        hi = f"{_num(self.high)}]" if self.high is not None else \
            f"{_num(self.below)})" if self.below is not None else None
        if lo and hi:
            return f"in {lo}, {hi}"
        if lo:
            return (">= " if lo[0] == "[" else "> ") + lo[1:]
        return ("<= " if hi[-1] == "]" else "< ") + hi[:-1] if hi else ""


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def setting(default: Any, help: str = "", **rule: Any) -> Any:
    """A dataclass field with its :class:`Rule` (lists and dicts get a default factory)."""
    meta = {"rule": Rule(help=help, **rule)}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def rule_of(f: Any) -> Rule:
    return f.metadata.get("rule", Rule())


def name_in(key: str, source: str) -> str:
    """How the user names setting ``key``: its ``--flag`` on the command line, else the key."""
    return f"--{key.replace('_', '-')}" if source == COMMAND_LINE else key


def said(key: str, value: Any, source: str) -> str:
    """What the user wrote: ``--crop 1 2`` on the command line, else ``crop = [1, 2] in
    SOURCE`` (a TOML file, a recipe, a saved run)."""
    if source == COMMAND_LINE:
        shown = " ".join(map(str, value)) if isinstance(value, list) else str(value)
        return f"{name_in(key, source)} {shown}"
    return f"{key} = {value!r} in {source}"


_KINDS = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string",
          dict: "a table of options"}


def typed(key: str, value: Any, hint: Any, source: str) -> Any:
    """``value`` checked against the field's type (floats made float); else FcnsegError.

    TOML and JSON know these types, so nothing is guessed: ``"0.01"`` is not a number and
    ``"no"`` is not false.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if value is None and type(None) in args:
        return None
    kind = origin or hint
    if kind in (types.UnionType, typing.Union):  # "str | None" with a value
        kind = next(a for a in args if a is not type(None))
    ok = _is_kind(value, list if kind is list else kind)
    if ok and kind is list:
        item = args[0] if args else Any
        ok = all(_is_kind(v, item) for v in value)
        value = [float(v) for v in value] if ok and item is float else value
    elif ok and kind is float:
        value = float(value)
    if not ok:
        want = (f"a list of {_KINDS.get(args[0], 'values').split(' ', 1)[1]}s"
                if kind is list else _KINDS.get(kind, str(kind)))
        raise FcnsegError(f"{said(key, value, source)}: must be {want}")
    return value


def _is_kind(value: Any, kind: Any) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) \
            and math.isfinite(value)
    return kind is Any or isinstance(value, kind)


def check(key: str, value: Any, rule: Rule, source: str,
          choices: dict[str, tuple[str, ...]]) -> None:
    """Raise :class:`FcnsegError` (one line naming the setting) unless ``value`` obeys
    ``rule``; its type has been checked by :func:`typed`."""
    what = said(key, value, source)
    if rule.choices is not None and value not in choices[rule.choices]:
        raise FcnsegError(f"{what}: unknown {key.replace('_', '-')}: choose one of "
                          f"{', '.join(map(str, choices[rule.choices]))}")
    if rule.pattern is not None and value is not None \
            and not re.fullmatch(rule.pattern, value):
        problem = "empty" if value == "" else "not valid"
        raise FcnsegError(f"{what}: {problem}, give {rule.help.split(';')[0] or 'a value'}")
    items = value if isinstance(value, list) else [value]
    if rule.length is not None and len(items) != rule.length:
        raise FcnsegError(f"{what}: needs {rule.length} values")
    for v in items:
        if (rule.low is not None and v < rule.low) or (rule.high is not None and v > rule.high) \
                or (rule.above is not None and v <= rule.above) \
                or (rule.below is not None and v >= rule.below):
            raise FcnsegError(f"{what}: out of range, must be {rule.describe()}")
