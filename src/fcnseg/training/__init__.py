"""Training: the config, the run and its loop, the time budget, data loading, losses, optimizers.

Only training lives here; checkpoint files (:mod:`fcnseg.checkpoint`), process groups
(:mod:`fcnseg.distributed`) and evaluation (:mod:`fcnseg.inference.evaluate`) sit below it,
so that predicting never imports the training package. Sub-modules are imported where
needed (``from fcnseg.training.train import train``).
"""
