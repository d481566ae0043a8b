"""esper_lab: a notebook-first research workbench for morphogenetic neural networks.

Where each concept lives is listed in the README ("What is where")."""

__version__ = "0.1.0"
