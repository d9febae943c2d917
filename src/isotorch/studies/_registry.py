"""The study registry: ``@register("name")`` over a :class:`Study` subclass; :func:`get` and :func:`names`.

A study is a class with a frozen dataclass ``Config`` (every field has a default), optional ``presets`` (named
dicts of overrides; ``"tiny"`` is the size the test suite runs), ``run(ctx)`` called once per seed, and
``summarise``/``figures``/``verdicts`` called once over all seeds (see ``docs/studies.md``). A study declares the
claims it tests in ``claims`` and gives one :class:`~isotorch.studies._verdicts.Verdict` per claim in ``verdicts``.

A study whose seed trains independent configurations (families, depths, widths) names them in
``configurations(config)``; the runner then calls ``run(ctx)`` once per (seed, configuration), each a unit of its
own (its own metrics file and checkpoint, a Ray task of its own), with ``ctx.configuration`` saying which one to
run, and joins a seed's results with ``combine`` once all its configurations have finished.
"""

from __future__ import annotations

import dataclasses
import json
import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from isotorch.studies._loop import StudyContext
    from isotorch.studies._run_folder import RunData
    from isotorch.studies._stats import Figure, Findings
    from isotorch.studies._verdicts import Claim, Verdict

__all__ = ["Study", "UnknownStudyError", "get", "names", "register"]

_REGISTRY: dict[str, type[Study]] = {}
_SKIP: set[str] = set()  # public modules of isotorch.studies that are not studies


class UnknownStudyError(KeyError):
    """No study is registered under the name (the message lists the registered ones)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Study:
    """Base class of a study. Subclasses set ``Config`` and implement :meth:`run`; the rest is optional.

    Attributes:
        name: the registered name (set by :func:`register`).
        Config: a frozen dataclass type with defaults for every field.
        presets: named override dicts, e.g. ``{"tiny": {"steps": 50}}``; the test suite runs ``"tiny"``.
        description: one line shown by ``isotorch study list`` (default: the first docstring line).
        claims: the claims the study tests (:class:`~isotorch.studies._verdicts.Claim`); :meth:`verdicts` must
            return exactly one verdict per claim (the runner checks, and writes ``verdicts.json``).
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type]
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    description: ClassVar[str] = ""
    claims: ClassVar[tuple[Claim, ...]] = ()

    def run(self, ctx: StudyContext) -> Mapping[str, Any] | None:
        """Train and measure for one seed (``ctx.seed``); return final scalar results (JSON-ready) or None.

        When the study declares :meth:`configurations`, ``run`` is called once per (seed, configuration) and runs only
        ``ctx.configuration``; its results are joined by :meth:`combine`.
        """
        raise NotImplementedError

    def configurations(self, config: Any) -> Sequence[str]:
        """The independent configurations of a seed under ``config``, in the order their records are reported.

        Each (seed, configuration) is then a unit of its own: a separate call of :meth:`run` (with the global RNGs
        and ``ctx.generator`` seeded with the seed, as for a whole seed), with its own metrics file and checkpoint,
        run in parallel by the Ray executor. Configurations must not depend on each other's training (a
        configuration sees only its own records in ``ctx.records``). Names are distinct non-empty strings whose file
        names (characters other than letters, digits and ``._=+,-`` become ``_``) are distinct too.

        Default: none (``()``): the whole seed is one unit and ``ctx.configuration`` is None.
        """
        return ()

    def combine(self, config: Any, seed: int, finals: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        """One seed's final results from its configurations' (``{configuration: results}``, in declared order).

        Called by the driver once every configuration of ``seed`` has finished; what it returns is the seed's entry
        of ``results.json`` (what :meth:`summarise`, :meth:`figures` and :meth:`verdicts` read). Default: the union
        of the dicts; a key returned by two configurations with different values is an error. Override to add
        results across configurations (e.g. a trend over them).
        """
        out: dict[str, Any] = {}
        owner: dict[str, str] = {}
        for name, values in finals.items():
            for key, value in values.items():
                if key in out and json.dumps(out[key], sort_keys=True) != json.dumps(value, sort_keys=True):
                    raise ValueError(
                        f"study {self.name!r}, seed {seed}: result {key!r} is returned by configurations "
                        f"{owner[key]!r} and {name!r} with different values; give each configuration its own keys"
                    )
                out[key], owner[key] = value, name
        return out

    def summarise(self, data: RunData) -> list[Findings]:
        """Findings tables over seeds (default: mean ± 95% CI of every numeric final result)."""
        from isotorch.studies._stats import Findings

        finals = data.finals
        if not finals:
            return []
        keys = [k for k, v in next(iter(finals.values())).items() if isinstance(v, int | float)]
        values = {k: [float(f[k]) for f in finals.values() if k in f] for k in keys}
        return [Findings.from_values("final results", {"all": values})]

    def figures(self, data: RunData, out: Path) -> list[Figure]:
        """Write PNG figures into ``out`` and return them with captions (default: none).

        Open each with :func:`~isotorch.studies._figures.subplots` and finish it with
        :func:`~isotorch.studies._figures.save_figure` (atomic write; returns the :class:`Figure` record).
        """
        return []

    def verdicts(self, data: RunData) -> list[Verdict]:
        """One verdict per claim in :attr:`claims`, from the run's data (default: none, for a study without claims).

        Use :func:`~isotorch.studies._verdicts.paired_verdict` (a difference of two conditions, paired by seed),
        :func:`~isotorch.studies._verdicts.verdict_from_values` (one value per seed) or, with a reason,
        :func:`~isotorch.studies._verdicts.inconclusive`.
        """
        return []


def register(name: str) -> Callable[[type[Study]], type[Study]]:
    """Class decorator: register a :class:`Study` subclass under ``name``.

    Examples:
        >>> from dataclasses import dataclass
        >>> @dataclass(frozen=True)
        ... class EchoConfig:
        ...     steps: int = 3
        >>> @register("echo-doctest")
        ... class Echo(Study):
        ...     Config = EchoConfig
        ...     def run(self, ctx):
        ...         return {"steps": ctx.config.steps}
        >>> get("echo-doctest").name
        'echo-doctest'
        >>> _ = _REGISTRY.pop("echo-doctest")  # keep the registry to the built-in studies
    """
    if not isinstance(name, str) or not name or not name.replace("-", "_").isidentifier():
        raise ValueError(f"name must be a non-empty identifier-like string, got {name!r}")

    def decorate(cls: type[Study]) -> type[Study]:
        if not (isinstance(cls, type) and issubclass(cls, Study)):
            raise TypeError(f"@register({name!r}) must decorate a Study subclass, got {cls!r}")
        config = getattr(cls, "Config", None)
        if not (isinstance(config, type) and dataclasses.is_dataclass(config)):
            raise TypeError(f"study {name!r} needs a dataclass Config, got {config!r}")
        if not config.__dataclass_params__.frozen:  # type: ignore[attr-defined]  # typeshed omits it
            raise TypeError(f"study {name!r}: Config {config.__name__} must be a frozen dataclass")
        try:
            config()
        except TypeError as exc:
            raise TypeError(f"study {name!r}: every field of {config.__name__} needs a default ({exc})") from None
        _check_claims(name, cls)
        existing = _REGISTRY.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"a study named {name!r} is already registered ({existing.__qualname__})")
        cls.name = name
        if not cls.description:
            cls.description = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        _REGISTRY[name] = cls
        return cls

    return decorate


def _check_claims(name: str, cls: type[Study]) -> None:
    from isotorch.studies._verdicts import Claim

    claims = cls.claims
    if not isinstance(claims, tuple) or not all(isinstance(c, Claim) for c in claims):
        raise TypeError(f"study {name!r}: claims must be a tuple of Claim objects, got {claims!r}")
    seen = [c.name for c in claims]
    if len(set(seen)) != len(seen):
        raise ValueError(f"study {name!r}: claim names must be unique, got {seen}")
    if claims and cls.verdicts is Study.verdicts:
        raise TypeError(f"study {name!r} declares claims but does not implement verdicts(data)")


ENTRY_POINT_GROUP = "isotorch.studies"
_PLUGINS: dict[str, str] = {}  # entry-point name -> why it could not be loaded
_plugins_loaded = False


def _load_builtin() -> None:
    """Import every public module of ``isotorch.studies`` (so that a new study file registers itself) and every
    study installed under the entry-point group ``isotorch.studies`` (once per process).

    A user's package registers a study with, in its ``pyproject.toml``::

        [project.entry-points."isotorch.studies"]
        my_study = "my_package.my_module:MyStudy"

    The entry point may name a :class:`Study` subclass (registered under the entry point's name unless
    ``@register`` already registered it) or a module whose import registers its studies. One that fails to
    load is left out of :func:`names`, and :func:`get` of its name says why.
    """
    import importlib
    import importlib.metadata
    import pkgutil

    import isotorch.studies as package

    global _plugins_loaded
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_") and info.name not in _SKIP:
            importlib.import_module(f"isotorch.studies.{info.name}")
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:  # a broken plugin must not break the built-in studies: get(name) says what went wrong
            loaded = entry.load()
            if isinstance(loaded, type) and issubclass(loaded, Study):
                if loaded not in _REGISTRY.values():
                    register(entry.name)(loaded)
            elif not isinstance(loaded, types.ModuleType):
                raise TypeError("it is neither a Study subclass nor a module")
        except Exception as err:
            _PLUGINS[entry.name] = f"entry point {entry.value!r} failed to load: {type(err).__name__}: {err}"


def names() -> list[str]:
    """Sorted names of the registered studies."""
    _load_builtin()
    return sorted(_REGISTRY)


def get(name: str) -> Study:
    """A new instance of the study registered under ``name``.

    Raises:
        UnknownStudyError: unknown name (a ``KeyError``; the message lists the registered ones).
    """
    _load_builtin()
    if name not in _REGISTRY and name in _PLUGINS:
        raise UnknownStudyError(f"study {name!r} is installed but not usable: {_PLUGINS[name]}")
    if name not in _REGISTRY:
        raise UnknownStudyError(f"unknown study {name!r}; registered studies: {', '.join(sorted(_REGISTRY)) or 'none'}")
    return _REGISTRY[name]()
