"""Method kinds that wrap a method's pipeline for the evaluation harness.

Each module holds one :class:`~instantportrait.evaluation.methods.Method` subclass, listed in
:data:`~instantportrait.evaluation.methods.METHOD_KINDS` (imported on first use).
"""
