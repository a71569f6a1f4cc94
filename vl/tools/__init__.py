"""Command-line tools that need both ``datapipes`` and ``vl`` (``datapipes`` never imports ``vl``).

``vl data`` is ``datapipes.cli`` plus the commands below, which ``vl.tools.data`` hands to it:

- ``vl data vq-targets`` (``vl.tools.vq_targets``): precompute MVM ``vq`` targets with a visual tokenizer.
"""
