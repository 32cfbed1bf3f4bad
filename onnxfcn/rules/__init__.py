"""Head rules, one per construct, each with its match, check and rewrite. The registry is walked
in this order; the first rule that matches a node owns it. To add a construct, write a rule in
the module of its family (or a new one imported here) and decorate it with ``@register``."""

from __future__ import annotations

from . import classes, collapse, dense, elementwise, quantized, reshape
from .base import REGISTRY, Rule, register

__all__ = ["REGISTRY", "Rule", "classes", "collapse", "dense", "elementwise", "quantized", "register", "reshape"]
