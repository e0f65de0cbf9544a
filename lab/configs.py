"""Presets: how train.py, lab/ablate.py, lab/checkpoints.py, the tests and the notebooks read a paper's configs.

A paper's preset (an entry of its CONFIGS) is a dataclass whose fields are config dataclasses: the model's
(what building the model reads), the recipe (what the trainer reads), and whatever else the paper needs (the
data's). Its leaves, the fields that are values, have distinct names across the whole preset, so `--set lr=...`,
an ablation row's {field: value} and the trainer name a leaf without its path ("recipe.lr" works too). A plain
dataclass of values is a preset with one level. `apply_overrides` parses --set's "key=value" items by the field's
type; `config_from_dict` rebuilds a preset from a checkpoint's `dataclasses.asdict`.

Ranges live on the field that declares them, in its annotation: `batch_size: Annotated[int, "[1, inf)"] = 32`, an
interval of the number (of each item, for a tuple). `check_ranges` refuses a value outside it, a non-finite float,
a value of the wrong type and a Literal field's value outside its choices, in one line naming the field;
`apply_overrides` calls it, so --set and an ablation row's fields are checked before any work. A command's numeric
flags declare theirs the same way, where the flag is declared: `add_argument("--max-steps", type=number(int,
"[0, inf)"))`, in a `Parser` (argparse's, whose errors are one line).
"""

import argparse
import dataclasses
import functools
import math
import re
import types
import typing


def leaf_paths(cfg):
    """{leaf name: its path of attribute names} of a config: a dataclass whose fields are values (the leaves) or
    config dataclasses (a paper's preset: model, recipe, ...). Raises ValueError when two leaves share a name."""
    paths = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        inner = {k: (f.name,) + p for k, p in leaf_paths(value).items()} if dataclasses.is_dataclass(value) else {
            f.name: (f.name,)}
        for name, path in inner.items():
            if name in paths:
                raise ValueError(f"{type(cfg).__name__}: leaf {name!r} is both {'.'.join(paths[name])} and "
                                 f"{'.'.join(path)}; a preset names each field once")
            paths[name] = path
    return paths


def config_leaves(cfg):
    """{leaf name: value} of a config (see leaf_paths): what --set, ablation rows and the trainer read by name."""
    return {name: functools.reduce(getattr, path, cfg) for name, path in leaf_paths(cfg).items()}


def with_fields(cfg, **changes):
    """A copy of the config with the named leaves replaced (nested dataclasses.replace); a key is a leaf name
    or a dotted path ("recipe.lr"). Raises KeyError naming an unknown key; the configs' own checks may raise."""
    paths = leaf_paths(cfg)
    paths |= {".".join(p): p for p in paths.values()}
    nested = {}
    for key, value in changes.items():
        if key not in paths:
            raise KeyError(key)
        node = nested
        for part in paths[key][:-1]:
            node = node.setdefault(part, {})
        node[paths[key][-1]] = value

    def replace(obj, tree):
        return dataclasses.replace(obj, **{k: replace(getattr(obj, k), v) if isinstance(v, dict) and
                                           dataclasses.is_dataclass(getattr(obj, k)) else v for k, v in tree.items()})
    return replace(cfg, nested)


def recipe_of(cfg):
    """The leaves train.py reads by name (batch_size, lr, weight_decay, max_steps, grad_clip, amp), as attributes."""
    return types.SimpleNamespace(**config_leaves(cfg))


def config_from_dict(cls, values):
    """The config dataclass `cls` rebuilt from `dataclasses.asdict` of one (a checkpoint's "config"). Leaves are
    placed by name, so a checkpoint written before a leaf moved to another sub-config still loads; a leaf `cls`
    no longer has raises ValueError naming it, and a leaf the checkpoint lacks keeps its default."""
    if not dataclasses.is_dataclass(cls):  # a preset of another type (a dict): its saved fields as they are
        return cls(**values)

    def flat(tree):
        return {k: w for key, v in tree.items() for k, w in (flat(v) if isinstance(v, dict) else {key: v}).items()}

    leaves = flat(values)

    def build(kind):
        hints = typing.get_type_hints(kind)
        nested = {f.name for f in dataclasses.fields(kind) if dataclasses.is_dataclass(hints[f.name])}
        return kind(**{f.name: build(hints[f.name]) if f.name in nested else leaves.pop(f.name)
                       for f in dataclasses.fields(kind) if f.name in nested or f.name in leaves})
    cfg = build(cls)
    if leaves:
        raise ValueError(f"{cls.__name__} has no field {sorted(leaves)}")
    return cfg


def parse_value(text, kind, current):
    """Parse `text` as a value of the dataclass field type `kind` whose value is now `current`:
    bool, int, float, str, Optional[X], Literal[...], and tuples/lists written "1,2,3" or "(1,2,3)" (items typed
    like the current items when the annotation is a bare `tuple`)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is bool:
        words = dict.fromkeys(("1", "true", "yes", "on"), True) | dict.fromkeys(("0", "false", "no", "off"), False)
        if text.lower() not in words:
            raise ValueError
        return words[text.lower()]
    if origin is typing.Union:  # Optional[X]: "none" or an X
        if text.lower() == "none":
            return None
        return parse_value(text, next(a for a in args if a is not type(None)), current)
    if origin is typing.Literal:
        if text not in map(str, args):
            raise ValueError
        return next(a for a in args if str(a) == text)
    if origin in (tuple, list) or kind in (tuple, list):
        item = args[0] if args else (type(current[0]) if current else str)
        items = text.strip().strip("()[]").split(",")
        return (origin or kind)(parse_value(t.strip(), item, None) for t in items if t.strip())
    return kind(text)


def interval(spec):
    """(low, high, low closed, high closed) of a range written as an interval: "[1, inf)", "[0, 1]", "(0, inf)"."""
    m = re.fullmatch(r"\s*([\[(])\s*(-?inf|[-+\d.e]+)\s*,\s*(-?inf|[-+\d.e]+)\s*([\])])\s*", spec)
    if not m:
        raise TypeError(f"range {spec!r}: expected an interval such as '[1, inf)' or '[0, 1]'")
    return float(m[2]), float(m[3]), m[1] == "[", m[4] == "]"


FLOAT32_MAX = 3.4028234663852886e38  # a config's floats meet float32 tensors: a larger one is inf there
INT64_MAX = 2 ** 63 - 1  # and its ints int64 ones


def check_value(where, value, kind, spec):
    """Raise ValueError naming `where` unless `value` is a `kind` (int, float, or a tuple of them) inside the
    interval `spec` (None: any finite number); floats must be finite in float32, ints fit int64."""
    items, number = (value if isinstance(value, (tuple, list)) and kind in (tuple, list) else (value,)), None
    for item in items:
        number = type(item) in (int, float) or (kind is float and type(item) is int)
        if not number or (kind is int and type(item) is not int):
            want = "a tuple of numbers" if kind in (tuple, list) else f"{'an' if kind is int else 'a'} {kind.__name__}"
            raise ValueError(f"{where}={value!r}: expected {want}" + (f" in {spec}" if spec else ""))
        low, high, low_in, high_in = interval(spec) if spec else (-math.inf, math.inf, False, False)
        inside = (low <= item if low_in else low < item) and (item <= high if high_in else item < high)
        too_big = math.isfinite(item) and abs(item) > (INT64_MAX if type(item) is int else FLOAT32_MAX)
        if not math.isfinite(item) or too_big or not inside:
            what = "each item" if kind in (tuple, list) else "a finite number" if spec is None else "a value"
            bits = f" that {'int64' if type(item) is int else 'float32'} holds" if too_big else ""
            raise ValueError(f"{where}={value!r}: expected {what} in {spec or '(-inf, inf)'}{bits}")


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one line ("PROG: error: argument --x: ..."), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def number(kind, spec):
    """An argparse `type` for a flag whose values are `kind` (int or float) in the interval `spec`."""
    def parse(text):
        want = f"{'an integer' if kind is int else 'a number'} in {spec}"
        try:
            value = kind(text)
            check_value("", value, kind, spec)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected {want}") from None
        return value
    return parse


def check_ranges(cfg):
    """Raise ValueError, in one line naming the field, the value and what it accepts, unless every leaf of the
    config is inside the range its annotation declares (`Annotated[int, "[1, inf)"]`), every float leaf without
    one is finite, and every Literal leaf holds one of its choices."""
    for f in dataclasses.fields(cfg):
        value, where = getattr(cfg, f.name), f"{type(cfg).__name__}.{f.name}"
        if dataclasses.is_dataclass(value):
            check_ranges(value)
            continue
        hint = typing.get_type_hints(type(cfg), include_extras=True)[f.name]
        spec = None
        if typing.get_origin(hint) is typing.Annotated:
            hint, spec = typing.get_args(hint)[:2]
        if typing.get_origin(hint) is typing.Literal and value not in typing.get_args(hint):
            raise ValueError(f"{where}={value!r}: expected one of {', '.join(map(repr, typing.get_args(hint)))}")
        kind = typing.get_origin(hint) or hint
        if spec is not None or (kind is float and value is not None):
            check_value(where, value, kind, spec)


def numeric_leaves(cfg):
    """{leaf name: its range or None} of the config's int, float and tuple leaves (those check_ranges can bound)."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out |= numeric_leaves(value)
            continue
        hint = typing.get_type_hints(type(cfg), include_extras=True)[f.name]
        spec = typing.get_args(hint)[1] if typing.get_origin(hint) is typing.Annotated else None
        kind = typing.get_origin(typing.get_type_hints(type(cfg))[f.name]) or typing.get_type_hints(type(cfg))[f.name]
        if kind in (int, float, tuple, list):
            out[f.name] = spec
    return out


def apply_overrides(cfg, overrides):
    """A copy of the config `cfg` with each "key=value" of `overrides` (a leaf name or a dotted path) parsed by
    the field's type."""
    paths = leaf_paths(cfg)
    paths |= {".".join(p): p for p in paths.values() if len(p) > 1}
    changes = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        if key not in paths:
            raise ValueError(f"--set {key}: {type(cfg).__name__} has no field {key!r}; valid fields: "
                             f"{', '.join(leaf_paths(cfg))}")
        owner = functools.reduce(getattr, paths[key][:-1], cfg)
        kind = typing.get_type_hints(type(owner))[paths[key][-1]]
        try:
            changes[key] = parse_value(text, kind, getattr(owner, paths[key][-1]))
        except (ValueError, TypeError):
            want = (f"one of {', '.join(map(str, typing.get_args(kind)))}" if typing.get_origin(kind) is typing.Literal
                    else f"a value of type {getattr(kind, '__name__', kind)}")
            raise ValueError(f"--set {item}: expected {want}") from None
    try:
        cfg = with_fields(cfg, **changes)  # the config's own checks (__post_init__)
        if dataclasses.is_dataclass(cfg):
            check_ranges(cfg)  # the ranges its fields declare
        return cfg
    except ValueError as e:
        raise ValueError(f"--set {' '.join(overrides)}: {e}") from None
