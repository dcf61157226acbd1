"""The top-level API's signatures are annotated (a fresh-eyes audit found a dozen bare
parameters: mixing, lr, steps, the kernels' arrays) and the annotations resolve."""
from __future__ import annotations

import inspect
import typing

import ntkdyn as nd


def public_functions():
    for name in sorted(n for n in dir(nd) if not n.startswith("_")):
        obj = getattr(nd, name)
        if inspect.isfunction(obj):
            yield name, obj


def test_every_public_function_is_annotated_and_its_hints_resolve():
    bare = {}
    for name, fn in public_functions():
        sig = inspect.signature(fn)
        missing = [p.name for p in sig.parameters.values()
                   if p.annotation is inspect.Parameter.empty
                   and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        if sig.return_annotation is inspect.Signature.empty:
            missing.append("return")
        if missing:
            bare[name] = missing
        typing.get_type_hints(fn)  # a NameError here: an annotation that does not resolve
    assert not bare, bare
    assert len(dict(public_functions())) >= 10
