"""Training engine: plain functions (config, checkpoints, the loop, DDP helpers).

Sub-modules are imported where needed (``from fcnseg.engine.checkpoint import ...``) so that
importing one does not pull in the others.
"""
