"""The names of the model's insides (its hook points) and how a forward captures or edits them.

```
embed
layers.{i}.residual_in   layers.{i}.attention.probs   layers.{i}.attention.out
layers.{i}.mlp.out       layers.{i}.residual_out
final_norm.out           logits
```

`Hooks` says which points a forward (`llama3_forward.forward`) captures and which it edits;
`EditSet` is the same edits as a pytree for a jitted program (functions static, numbers traced).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import jax

__all__ = [
    "HOOK_POINTS",
    "Edit",
    "EditSet",
    "Hooks",
    "expand_hook_names",
    "hook_point_names",
]

HOOK_POINTS = (
    "embed",
    "layers.{i}.residual_in",
    "layers.{i}.attention.probs",
    "layers.{i}.attention.out",
    "layers.{i}.mlp.out",
    "layers.{i}.residual_out",
    "final_norm.out",
    "logits",
)


def hook_point_names(num_layers: int) -> list[str]:
    """Every hook point of a model with ``num_layers`` decoder layers, in forward order.

    Example:
        >>> hook_point_names(1)
        ['embed', 'layers.0.residual_in', 'layers.0.attention.probs', 'layers.0.attention.out', 'layers.0.mlp.out', 'layers.0.residual_out', 'final_norm.out', 'logits']
    """
    names = ["embed"]
    for i in range(num_layers):
        names += [point.format(i=i) for point in HOOK_POINTS[1:6]]
    return [*names, "final_norm.out", "logits"]


def expand_hook_names(patterns: Iterable[str], num_layers: int) -> list[str]:
    """Hook point names from names or patterns with ``*`` for the layer index
    (``"layers.*.residual_out"``), in forward order; an unknown name is refused with the list.

    Example:
        >>> expand_hook_names(["logits", "layers.*.mlp.out"], 2)
        ['layers.0.mlp.out', 'layers.1.mlp.out', 'logits']
    """
    known = hook_point_names(num_layers)
    wanted: set[str] = set()
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(f"hook point names are strings, got {pattern!r}")
        if "*" in pattern:
            matches = {n for n in known if _matches(pattern, n)}
        else:
            matches = {pattern} & set(known)
        if not matches:
            raise ValueError(
                f"{pattern!r} is not a hook point of this model ({num_layers} layers): use "
                f"one of {', '.join(HOOK_POINTS)} with i in 0..{num_layers - 1} or '*'."
            )
        wanted |= matches
    return [n for n in known if n in wanted]


def _matches(pattern: str, name: str) -> bool:
    parts, names = pattern.split("."), name.split(".")
    return len(parts) == len(names) and all(
        p in ("*", n) for p, n in zip(parts, names, strict=True)
    )


class Edit(NamedTuple):
    """An edit whose numbers are traced: ``fn(value, params) -> value`` with ``params`` a pytree
    of arrays. The same ``fn`` with new ``params`` reuses the compiled program.

    Example:
        >>> scale = Edit(lambda value, s: value * s, 0.5)
        >>> scale.fn(2.0, scale.params)
        1.0
    """

    fn: Callable[[Any, Any], Any]
    params: Any


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class EditSet:
    """Edits at hook points as a pytree for a jitted program: ``spec`` (static: the names and
    functions, part of the compile key) and ``params`` (traced arrays, one per edit; None for a
    plain ``fn(value)``). New params never recompile.

    Example:
        >>> edits = EditSet.of({"layers.*.mlp.out": lambda v: v * 0}, num_layers=2)
        >>> [name for name, _, _ in edits.spec]
        ['layers.0.mlp.out', 'layers.1.mlp.out']
    """

    spec: tuple = dataclasses.field(default=(), metadata={"static": True})
    params: tuple = ()

    @classmethod
    def of(cls, edits: Mapping[str, Callable | Edit] | None, num_layers: int) -> EditSet:
        """From ``{name or pattern: fn or Edit}`` (``*`` for every layer), in forward order."""
        spec, params = [], []
        for pattern, edit in (edits or {}).items():
            if isinstance(edit, Edit):
                fn, value, takes = edit.fn, edit.params, True
            elif callable(edit):
                fn, value, takes = edit, None, False
            else:
                raise TypeError(
                    f"edits[{pattern!r}] is a {type(edit).__name__}: give a function of the "
                    "value, or Edit(fn, params) for an edit whose numbers change between calls."
                )
            for name in expand_hook_names([pattern], num_layers):
                spec.append((name, fn, takes))
                params.append(value)
        return cls(tuple(spec), tuple(params))

    def hooks(self, capture: Iterable[str] = ()) -> Hooks | None:
        """The `Hooks` applying these edits (None when there are none and nothing to capture)."""
        if not self.spec and not capture:
            return None
        edits = {
            name: (fn, value) if takes else fn
            for (name, fn, takes), value in zip(self.spec, self.params, strict=True)
        }
        return Hooks(capture=capture, edits=edits)

    def __bool__(self) -> bool:
        return bool(self.spec)


class Hooks:
    """Which hook points a forward captures and which it edits.

    ``capture``: names whose values are recorded in `captured` (tracers inside a jitted
    function: return them from it). ``edits``: ``{name: fn}``, ``fn(value) -> value``, or
    ``{name: (fn, params)}``, ``fn(value, params) -> value`` with ``params`` a pytree of arrays
    (traced: a new value does not recompile).

    Example:
        >>> hooks = Hooks(capture=["layers.0.residual_out"])
        >>> hooks.wants_probabilities(0)
        False
    """

    def __init__(
        self,
        capture: Iterable[str] = (),
        edits: Mapping[str, Callable | tuple[Callable, Any]] | None = None,
    ):
        self.capture = frozenset(capture)
        self.edits = dict(edits or {})
        self.captured: dict[str, Any] = {}

    def __call__(self, name: str, value):
        edit = self.edits.get(name)
        if edit is not None:
            value = edit[0](value, edit[1]) if isinstance(edit, tuple) else edit(value)
        if name in self.capture:
            self.captured[name] = value
        return value

    def wants_probabilities(self, layer: int) -> bool:
        name = f"layers.{layer}.attention.probs"
        return name in self.capture or name in self.edits

    def __bool__(self) -> bool:
        return bool(self.capture or self.edits)


_NO_HOOKS = Hooks()
