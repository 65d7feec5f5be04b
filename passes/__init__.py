"""The built-in passes, one per module; `BUILTIN_PASSES` lists them in pipeline order."""

from kirin_compiler.passes.canonicalize import CanonicalizePass

BUILTIN_PASSES = (CanonicalizePass,)

__all__ = ["BUILTIN_PASSES", "CanonicalizePass"]
