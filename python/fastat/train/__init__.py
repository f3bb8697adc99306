"""fastat.train: adversarial training with any fastat method (`fit`, `Trainer`, `TrainConfig`, `sweep`; CLIs `fastat
train`, `fastat sweep`)."""

from .config import ConfigError, TrainConfig, parse_number, parse_value
from .monitor import CO_ACTIONS, COMonitor, WongCODetector
from .schedules import SCHEDULES, StepSchedule, lr_factor, make_scheduler
from .sweeps import sweep
from .trainer import Trainer, fit

__all__ = ["CO_ACTIONS", "COMonitor", "ConfigError", "SCHEDULES", "StepSchedule", "TrainConfig", "Trainer", "fit",
           "lr_factor", "make_scheduler", "parse_number", "parse_value", "sweep", "WongCODetector"]
