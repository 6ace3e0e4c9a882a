"""fatlib: fast adversarial training, reproduced.

Every attack, regularizer, model, training loop and evaluation used by the
book lives here; the notebooks only call it. Inputs are images in [0, 1]
(pixel space); eps and alpha are in pixel units (8/255, not 8).
"""

__version__ = "0.1.0"
