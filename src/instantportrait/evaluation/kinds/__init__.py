"""Method kinds of the evaluation harness, one module each (listed in ``METHOD_KINDS``)."""
