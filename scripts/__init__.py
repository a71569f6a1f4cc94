"""Project tools run from the repository root (`python -m scripts.prepare.<benchmark> ...`)."""
