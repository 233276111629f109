"""A loss with a bug, for the test that a crashing job ends alone (imported by cl-run through PYTHONPATH)."""
from cl_runner.losses import Loss


class CrashingLoss(Loss):
    pairings = ("triplet",)

    def __init__(self, **params):
        super().__init__()

    def forward(self, z, target=None, labels=None):
        raise RuntimeError("a bug in a loss")
