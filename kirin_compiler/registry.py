"""The pass registry and the pipeline parser.

Passes come from three places, all checked the same way (a `Pass` subclass with a unique
kebab-case name):

1. the built-in passes (`kirin_compiler.passes.BUILTIN_PASSES`);
2. the ``kirin_compiler.passes`` entry-point group of installed packages;
3. ``module:Class`` or ``path/to/file.py:Class`` given on the command line (``--load-pass``)
   or to `PassRegistry.load`.

A pipeline is ``name{option=value,...},name,...``; option values are parsed by the type of the
pass's dataclass field.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import pathlib
import re
import sys
import typing

from kirin_compiler import files
from kirin_compiler.errors import KirinError
from kirin_compiler.pass_manager import Pass

ENTRY_POINT_GROUP = "kirin_compiler.passes"

_KEBAB = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


class PassRegistry:
    """Maps pass names to pass classes. Build one per compilation; there is no global one."""

    def __init__(self) -> None:
        self._passes: dict[str, type[Pass]] = {}

    @classmethod
    def default(cls) -> PassRegistry:
        """The built-in passes plus those installed through entry points."""
        from kirin_compiler.passes import BUILTIN_PASSES

        registry = cls()
        for pass_class in BUILTIN_PASSES:
            registry.register(pass_class)
        registry.load_entry_points()
        return registry

    def register(self, pass_class: type[Pass], origin: str = "") -> type[Pass]:
        where = f" (from {origin})" if origin else ""
        if not (inspect.isclass(pass_class) and issubclass(pass_class, Pass)):
            raise KirinError(f"{pass_class!r}{where} is not a kirin_compiler Pass subclass")
        name = getattr(pass_class, "name", None)
        if not isinstance(name, str) or not _KEBAB.match(name):
            raise KirinError(
                f"pass class {pass_class.__qualname__}{where} needs a kebab-case 'name' "
                f"(like 'my-pass'), not {name!r}"
            )
        required = [
            f.name for f in dataclasses.fields(pass_class) if f.init
            and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ] if dataclasses.is_dataclass(pass_class) else []
        if required:
            raise KirinError(
                f"pass '{name}'{where} has options without a default ({', '.join(required)}); "
                "give every option a default: a pipeline may name the pass without options"
            )
        existing = self._passes.get(name)
        if existing is not None and existing is not pass_class:
            raise KirinError(
                f"two passes are named '{name}': {_qualified(existing)} and "
                f"{_qualified(pass_class)}{where}; rename one"
            )
        self._passes[name] = pass_class
        return pass_class

    def load_entry_points(self) -> None:
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            origin = f"entry point '{entry_point.name} = {entry_point.value}'"
            try:
                pass_class = entry_point.load()
            except Exception as error:
                raise KirinError(f"cannot load {origin}: {error}") from error
            self.register(pass_class, origin)

    def load(self, spec: str) -> type[Pass]:
        """Registers the pass named by ``module:Class`` or ``path/to/file.py:Class``."""
        module_name, _, class_name = spec.rpartition(":")
        if not module_name or not class_name:
            raise KirinError(f"--load-pass '{spec}': expected 'module:Class' or 'file.py:Class'")
        module = _import(module_name, spec)
        pass_class = getattr(module, class_name, None)
        if pass_class is None:
            raise KirinError(f"--load-pass '{spec}': '{module_name}' has no '{class_name}'")
        return self.register(pass_class, f"--load-pass {spec}")

    def names(self) -> list[str]:
        return sorted(self._passes)

    def __getitem__(self, name: str) -> type[Pass]:
        try:
            return self._passes[name]
        except KeyError:
            raise KirinError(
                f"unknown pass '{name}'; known passes: {', '.join(self.names())}"
            ) from None

    def __iter__(self) -> typing.Iterator[type[Pass]]:
        return iter(self._passes[name] for name in self.names())

    def parse_pipeline(self, text: str) -> list[Pass]:
        """``"canonicalize,my-pass{alpha=0.5}"`` -> pass instances, in order."""
        items = split_pipeline(text)
        if not items:
            raise KirinError("the pipeline is empty; name at least one pass (see --list-passes)")
        return [self.instantiate(name, options) for name, options in items]

    def instantiate(self, name: str, raw_options: dict[str, str]) -> Pass:
        pass_class = self[name]
        types = pass_class.option_types()
        options = {}
        for key, raw in raw_options.items():
            if key not in types:
                known = ", ".join(f"{k}: {type_name(t)}" for k, t in types.items()) or "none"
                raise KirinError(f"pass '{name}' has no option '{key}' (options: {known})")
            options[key] = parse_option(name, key, raw, types[key])
        return pass_class(**options)


def split_pipeline(text: str) -> list[tuple[str, dict[str, str]]]:
    """Splits pipeline text into (name, {option: raw value}) without interpreting values."""
    items = []
    pattern = re.compile(r"\s*([^,{}\s]+)\s*(?:\{([^{}]*)\})?\s*(?:,|$)")
    position = 0
    text = text.strip()
    while position < len(text):
        match = pattern.match(text, position)
        if not match or match.end() == position:
            raise KirinError(
                f"cannot parse pipeline '{text}' at character {position + 1}: expected "
                "'name' or 'name{key=value,...}', separated by commas"
            )
        name, body = match.group(1), match.group(2)
        options: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in (body or "").split(","))):
            key, equals, value = (part.strip() for part in item.partition("="))
            if not equals or not key:
                raise KirinError(f"option '{item}' of pass '{name}' is not 'key=value'")
            if key in options:
                raise KirinError(f"option '{key}' of pass '{name}' is given twice")
            options[key] = value
        items.append((name, options))
        position = match.end()
    return items


def parse_option(pass_name: str, key: str, raw: str, option_type: object) -> object:
    """The value of option ``key`` of ``pass_name`` written ``raw``, of ``option_type``."""
    where = f"option '{key}' of pass '{pass_name}'"
    if typing.get_origin(option_type) is typing.Literal:
        choices = typing.get_args(option_type)
        if raw not in choices:
            raise KirinError(f"{where} must be one of {', '.join(choices)}, not '{raw}'")
        return raw
    if option_type is bool:
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise KirinError(f"{where} expects bool (true or false), not '{raw}'")
    if option_type in (int, float, str):
        try:
            return option_type(raw)
        except ValueError:
            raise KirinError(f"{where} expects {option_type.__name__}, not '{raw}'") from None
    raise KirinError(f"{where} has type {option_type!r}, which pipelines cannot express")


def type_name(option_type: object) -> str:
    """An option type as users write it: ``int``, ``bool``, ``fast|exact``."""
    if typing.get_origin(option_type) is typing.Literal:
        return "|".join(typing.get_args(option_type))
    return getattr(option_type, "__name__", str(option_type))


def _qualified(pass_class: type) -> str:
    return f"{pass_class.__module__}.{pass_class.__qualname__}"


def _import(module_name: str, spec: str):
    if module_name.endswith(".py"):
        path = pathlib.Path(module_name)
        if not path.is_file():
            raise KirinError(f"--load-pass '{spec}': file '{path}' does not exist")
        # One module per file, however often it is named: loading it twice gives the same classes.
        resolved = str(path.resolve())
        unique = f"kirin_user_pass_{hashlib.sha1(resolved.encode()).hexdigest()[:12]}"
        files.read(path, "the pass plugin")
        if unique in sys.modules:
            return sys.modules[unique]
        module_spec = importlib.util.spec_from_file_location(unique, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[unique] = module
        try:
            module_spec.loader.exec_module(module)
        except SystemExit as error:  # a plugin may not end the run
            del sys.modules[unique]
            raise KirinError(
                f"--load-pass '{spec}': importing '{path}' called sys.exit({error.code})"
            ) from None
        except Exception as error:
            del sys.modules[unique]  # a half-imported module is not loaded again by the next run
            raise KirinError(f"--load-pass '{spec}': importing '{path}' failed: {error}") from error
        return module
    try:
        module = importlib.import_module(module_name)
    except SystemExit as error:
        raise KirinError(
            f"--load-pass '{spec}': importing '{module_name}' called sys.exit({error.code})"
        ) from None
    except ImportError as error:
        raise KirinError(f"--load-pass '{spec}': cannot import '{module_name}': {error}") from None
    if getattr(module, "__file__", None):
        files.read(module.__file__, "the pass plugin")
    return module
