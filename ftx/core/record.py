"""``@record``: a frozen dataclass's behaviour, cheap to define (pure: no I/O).

``dataclasses.dataclass`` compiles every generated method with ``exec`` when the class is
defined: about 3.5M instructions per frozen class, a fifth of a one-file ``ftx send``'s
start-up for the events and messages alone.  ``record`` builds the same behaviour from
plain functions shared by every class, so defining one costs about what a plain class
costs:

- construction by position or keyword, with defaults (``field(default_factory=...)`` for
  mutable ones), ``TypeError`` as a dataclass raises it for a missing or unknown argument;
  a class may write its own ``__init__`` (the per-file ones do: see events.py);
- ``==`` field by field between instances of the same class (else ``NotImplemented``),
  a ``repr`` as a dataclass's (``Name(a=1, b='x')``; ``field(repr=False)`` leaves one out;
  a class's own ``__repr__`` is kept);
- frozen (the default): assigning or deleting an attribute raises ``FrozenInstanceError``,
  and ``hash`` is that of the fields; ``@record(frozen=False)``: assignable, not hashable;
- ``fields(cls)`` (the names, in order), ``replace(obj, **changes)``, ``__match_args__``;
- pickling and ``copy`` as for any object with a ``__dict__``.

Fields are the class's own annotations in order (with ``from __future__ import annotations``
they are strings, never evaluated), after those of a base that is a record.  Instances keep
their fields in ``__dict__``, so ``manifest.built`` fills one without calling ``__init__``.
Type checkers see a frozen dataclass (``dataclass_transform``).
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar, overload

T = TypeVar("T")

try:
    from typing import dataclass_transform
except ImportError:  # Python 3.10: only type checkers read it (they know typing_extensions')

    def dataclass_transform(**kwargs: Any) -> Callable[[T], T]:
        return lambda f: f


_MISSING = object()


class FrozenInstanceError(AttributeError):
    """Assigning to a field of a record (as ``dataclasses.FrozenInstanceError``)."""


class _Field:
    __slots__ = ("default", "make", "repr")

    def __init__(self, default: Any, make: Callable[[], Any] | None, repr: bool) -> None:
        self.default, self.make, self.repr = default, make, repr


def field(*, default: Any = _MISSING, default_factory: Callable[[], Any] | None = None, repr: bool = True) -> Any:
    """A field's default made per instance (``held: RangeSet = field(default_factory=RangeSet)``),
    or a field left out of ``repr`` (``repr=False``)."""
    return _Field(default, default_factory, repr)


def fields(obj_or_cls) -> tuple[str, ...]:
    """The field names of a record (class or instance), in order."""
    return obj_or_cls._fields


def replace(obj: T, **changes) -> T:
    """A copy of record ``obj`` with ``changes`` (as ``dataclasses.replace``)."""
    values = {name: getattr(obj, name) for name in obj._fields}
    values.update(changes)
    return type(obj)(**values)


def _frozen_setattr(self, name, value):
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self, name):
    raise FrozenInstanceError(f"cannot delete field {name!r}")


def _eq(self, other):
    # a frozen instance's __dict__ holds its fields and nothing else: dict equality is field equality
    if other.__class__ is self.__class__:
        return self.__dict__ == other.__dict__
    return NotImplemented


def _eq_mutable(self, other):
    # a mutable one may carry other attributes too (set by its user): compare the fields only
    if other.__class__ is self.__class__:
        return _values(self) == _values(other)
    return NotImplemented


def _values(self) -> tuple:
    d = self.__dict__
    return tuple([d[name] for name in self._fields])


def _hash(self):
    return hash(_values(self))


def _repr(self):
    d = self.__dict__
    inner = ", ".join([f"{name}={d[name]!r}" for name in self._repr_fields])
    return f"{self.__class__.__qualname__}({inner})"


def _make_init(names: tuple[str, ...], defaults: dict[str, Any], qualname: str):
    n = len(names)
    nameset = frozenset(names)
    factories = {k: v for k, v in defaults.items() if isinstance(v, _Make)}
    plain = {k: v for k, v in defaults.items() if k not in factories}
    required = n - len(defaults)

    def general(self, args: tuple, kwargs: dict) -> None:
        d = self.__dict__
        if not kwargs:
            if required <= len(args) < n and not factories:  # the rest from defaults
                d.update(plain)
                d.update(zip(names, args))
                return
        elif not args and kwargs.keys() == nameset:  # every field by keyword
            d.update(kwargs)
            return
        if len(args) > n:
            raise TypeError(f"{qualname}.__init__() takes {n + 1} positional arguments but {len(args) + 1} were given")
        for name in kwargs:
            if name not in nameset:
                raise TypeError(f"{qualname}.__init__() got an unexpected keyword argument {name!r}")
        for name in names[: len(args)]:
            if name in kwargs:
                raise TypeError(f"{qualname}.__init__() got multiple values for argument {name!r}")
        missing = [name for name in names[len(args):] if name not in kwargs and name not in defaults]
        if missing:
            raise TypeError(f"{qualname}.__init__() missing {len(missing)} required argument(s): "
                            + ", ".join(repr(m) for m in missing))
        d.update(plain)
        d.update(zip(names, args))
        d.update(kwargs)
        for name, make in factories.items():
            if name not in d:
                d[name] = make.make()

    # every field by position is the common call: one store per field, spelled out for the
    # small arities (zip and dict.update cost about as much as a dataclass's whole __init__)
    if n == 1:
        (k0,) = names

        def __init__(self, *args, **kwargs):
            if len(args) == 1 and not kwargs:
                self.__dict__[k0] = args[0]
            else:
                general(self, args, kwargs)
    elif n == 2:
        k0, k1 = names

        def __init__(self, *args, **kwargs):
            if len(args) == 2 and not kwargs:
                d = self.__dict__
                d[k0], d[k1] = args
            else:
                general(self, args, kwargs)
    elif n == 3:
        k0, k1, k2 = names

        def __init__(self, *args, **kwargs):
            if len(args) == 3 and not kwargs:
                d = self.__dict__
                d[k0], d[k1], d[k2] = args
            else:
                general(self, args, kwargs)
    elif n == 4:
        k0, k1, k2, k3 = names

        def __init__(self, *args, **kwargs):
            if len(args) == 4 and not kwargs:
                d = self.__dict__
                d[k0], d[k1], d[k2], d[k3] = args
            else:
                general(self, args, kwargs)
    else:

        def __init__(self, *args, **kwargs):
            if len(args) == n and not kwargs:
                self.__dict__.update(zip(names, args))
            else:
                general(self, args, kwargs)

    __init__.__qualname__ = f"{qualname}.__init__"
    return __init__


class _Make:
    """A default made per instance (``field(default_factory=...)``)."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


@overload
def record(cls: type[T], /) -> type[T]: ...
@overload
def record(*, frozen: bool = True) -> Callable[[type[T]], type[T]]: ...


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(cls: type[T] | None = None, /, *, frozen: bool = True) -> Any:
    """Make ``cls`` a record of its annotated fields (see the module's docstring);
    ``@record(frozen=False)``: its fields may be assigned, and it is not hashable."""
    if cls is None:
        return lambda c: _build(c, frozen)
    return _build(cls, frozen)


def _build(cls, frozen: bool):
    base = next((b for b in cls.__mro__[1:] if "_fields" in b.__dict__), None)
    names = list(base._fields) if base is not None else []
    defaults = dict(base._defaults) if base is not None else {}
    hidden = set(base._fields) - set(base._repr_fields) if base is not None else set()
    for name in cls.__dict__.get("__annotations__", {}):
        if name not in names:
            names.append(name)
        value = cls.__dict__.get(name, _MISSING)
        if isinstance(value, _Field):
            if not value.repr:
                hidden.add(name)
            if value.make is not None:
                defaults[name] = _Make(value.make)
                delattr(cls, name)
            elif value.default is not _MISSING:
                defaults[name] = value.default
                setattr(cls, name, value.default)
            else:
                delattr(cls, name)
        elif value is not _MISSING:
            defaults[name] = value
    seen_default = False
    for name in names:
        if name in defaults:
            seen_default = True
        elif seen_default:
            raise TypeError(f"non-default argument {name!r} follows default argument")
    names = tuple(names)
    cls._fields = names
    cls._repr_fields = tuple(name for name in names if name not in hidden)
    cls._defaults = defaults
    cls.__match_args__ = names
    if "__init__" not in cls.__dict__:
        cls.__init__ = _make_init(names, defaults, cls.__qualname__)
    if "__repr__" not in cls.__dict__:  # (as a dataclass: a class's own is kept)
        cls.__repr__ = _repr
    if frozen:
        cls.__eq__ = _eq
        cls.__hash__ = _hash
        cls.__setattr__ = _frozen_setattr
        cls.__delattr__ = _frozen_delattr
    else:
        cls.__eq__ = _eq_mutable
        cls.__hash__ = None
    return cls
