"""The peer's time budget: ours' rule, run by ours' code, in the peer's loop.

bench/peer_detector.py --max_minutes M trains torchvision's detector for as long as
libs/train/time_budget.py decides for tools/train.py --max_minutes M: the config's
schedule over the training images, fitted after a warm-up (the same windows), re-fitted
once the speed has settled before the first LR drop, stopped early only in the last LR
stage. Nothing here imports TensorFlow or torch: the peer's venv runs it, CI tests it
with a clock the test moves.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from libs.configs import load_config  # noqa: E402
from libs.train import time_budget  # noqa: E402


class BudgetedSchedule:
    """A --max_minutes budget run by ours' code (libs/train/time_budget.py): the config's
    schedule over the training images, fitted after a warm-up and re-fitted once."""

    def __init__(self, cfg_path, num_images, minutes, started_at, clock=time.monotonic):
        self.rules = time_budget
        self.cfg = load_config(cfg_path, {}).replace(NUM_TRAIN_IMAGES=num_images)
        self.budget = time_budget.TimeBudget(minutes, clock=clock, started_at=started_at)
        self.clock = clock
        self.total, self.boundaries = int(self.cfg.MAX_STEPS), list(self.cfg.BOUNDARY)
        self.record, self.refit_done, self.mark = None, False, None

    def _apply(self, fitted):
        self.total, self.boundaries = int(fitted.MAX_STEPS), list(fitted.BOUNDARY)

    def after_step(self, steps_done, now=None):
        """Called after every step; decides (then re-fits) the schedule when the
        measurement windows are full. Returns the line to print, or None."""
        rules, now = self.rules, self.clock() if now is None else now
        if self.mark is None:
            if steps_done >= rules.WARMUP_SKIP_STEPS:    # first steps: allocations
                self.mark = (steps_done, now)
            return None
        steps, seconds = steps_done - self.mark[0], now - self.mark[1]
        if steps < rules.WARMUP_MIN_STEPS:
            return None
        if self.record is None and seconds >= self.budget.warmup_seconds:
            fitted, self.record = rules.decide_schedule(self.cfg, self.budget,
                                                        steps / seconds, steps_done, 0.0)
            self._apply(fitted)
            self.mark = (steps_done, now)
            return rules.describe_decision(self.record)
        if self.record is not None and not self.refit_done:
            if steps_done > rules.refit_last_step(self.record):
                self.refit_done = True          # too late to move the drops
            elif seconds >= self.budget.refit_seconds:
                self.refit_done = True
                fitted, self.record = rules.refit_schedule(self.cfg, self.record,
                                                           self.budget, steps / seconds,
                                                           steps_done)
                if fitted is not None:
                    self._apply(fitted)
                return rules.describe_refit(self.record)
        return None

    def finished(self, steps_done):
        """The schedule's end, or out of time in the last LR stage (never before)."""
        in_last_stage = not self.boundaries or steps_done > self.boundaries[-1]
        return steps_done >= self.total or (in_last_stage and self.budget.remaining() <= 0)
