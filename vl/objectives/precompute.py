"""Moved: the ``vl data vq-targets`` tool and its reader live in ``vl.tools.vq_targets`` (tools live with tools).

These names stay importable from here only for ``vl/objectives/mvm.py`` (``load_vq_targets``) and
``tests/test_mvm.py`` (``load_vq_targets``, ``main``); once they import from ``vl.tools.vq_targets``, delete
this module.
"""

from vl.tools.vq_targets import load_vq_targets, main

__all__ = ["load_vq_targets", "main"]
