"""Training: the pre-training loop (``loop.train``) and distributed setup (``distributed``)."""

from midirwkv.train.distributed import DistInfo, cleanup_distributed, setup_distributed
from midirwkv.train.loop import StepInfo, TrainResult, lr_at, train
from midirwkv.train.runlog import latest_checkpoint, plot_curves, read_log

__all__ = ["DistInfo", "StepInfo", "TrainResult", "cleanup_distributed", "latest_checkpoint", "lr_at",
           "plot_curves", "read_log", "setup_distributed", "train"]
