"""A training schedule that fits a wall-time budget (tools/train.py --max_minutes).

A budget that simply stopped training when time ran out cut slow machines' runs before
their learning rate ever decayed. With a budget, libs.train.training.train instead:

1. warms up: real training steps at the first LR stage (the config's own graph) while
   hooks.SpeedMeter measures the steps per second, after skipping the first steps
   (graph optimisation, first allocations);
2. decides the schedule (decide_schedule): the time left is the budget minus what
   has run since start-up (imports, graph build and warm-up included), minus the cost
   of building the graph again (measured in step 1) and a safety margin for the final
   checkpoint. If the config's steps fit in it, its schedule is kept as it is (never
   lengthened); otherwise the total steps and every LR boundary are scaled down
   together, proportionally (a new config with SCHEDULE_STEPS set, whose MAX_STEPS and
   BOUNDARY libs.configs computes: apply_total_steps). The decision is one line, e.g.
       time budget 55 min at 1.4 steps/s: 4,600 steps, LR drops at 3,345 and 4,181
       (the config's 11,275 steps scaled by 0.408)
   and <model_dir>/schedule.json;
3. trains on from the warm-up's checkpoint under that schedule;
4. re-fits it once the speed has settled (refit_schedule): a warm-up minute is easily
   fooled (other processes busy in that minute read 1.4 steps/s where the run then
   went at 1.8, and stopped with 27% of its budget unused), so after REFIT window more
   (hooks.RefitHook; before the first LR drop: at most halfway to it) the schedule is
   decided again from the steady rate, lengthened back up to the config's or shortened,
   the LR drops moving with it. One line says so, e.g.
       speed settled at 1.8 steps/s (the warm-up read 1.4): 2,950 steps, LR drops at
       2,212 and 2,655 (was 2,330)
   and schedule.json records both decisions; a change under REFIT_TOLERANCE keeps the
   running schedule (a restart costs seconds). Training goes on to the final checkpoint.

A rerun of the command (after a crash or a kill) finds schedule.json and keeps its
schedule: no new warm-up, the same boundaries. Running out of time stops training only
in the last LR stage (a machine that got slower after the warm-up): a budget never
cuts a run before its learning rate has decayed.

No TensorFlow here: the arithmetic and the file are tested on their own.
"""
import json
import math
import os
import time

from libs.base.errors import UserError
from libs.base.io_utils import atomic_write, format_rate
from libs.configs import ConfigError

SCHEDULE_FILE = "schedule.json"

# Warm-up: skip this many steps, then measure for WARMUP_SECONDS (at most
# WARMUP_FRACTION of the budget) and at least WARMUP_MIN_STEPS steps.
WARMUP_SKIP_STEPS = 3
WARMUP_MIN_STEPS = 5
WARMUP_SECONDS = 60.0
WARMUP_FRACTION = 0.05
# Re-fit: the steady rate over this long after the warm-up (at most REFIT_FRACTION of
# the budget, never shorter than the warm-up's own window).
REFIT_SECONDS = 240.0
REFIT_FRACTION = 0.10
REFIT_TOLERANCE = 0.02
# Kept free at the end for the final checkpoint and the measurement's error.
MARGIN_FRACTION = 0.02
MARGIN_MIN_SECONDS = 10.0


class BudgetError(UserError):
    """A budget that cannot be used or met; the message is one line for the user."""


class TimeBudget:
    """`minutes` of wall time for a whole training command, counted from `started_at`.

    clock: seconds, monotonic (injectable: tests freeze it). started_at: the clock's
    value when the command started (default: now). steps_per_second: a rate to use
    instead of measuring it (tests; the warm-up then runs WARMUP_MIN_STEPS steps).
    """

    def __init__(self, minutes, clock=time.monotonic, started_at=None,
                 steps_per_second=None):
        if not isinstance(minutes, (int, float)) or not minutes > 0 or \
                not math.isfinite(minutes):
            raise BudgetError(f"--max_minutes must be a positive number of minutes, "
                              f"got {minutes!r}")
        if steps_per_second is not None and not steps_per_second > 0:
            raise BudgetError(f"steps_per_second must be positive, got {steps_per_second!r}")
        self.minutes = float(minutes)
        self.seconds = 60.0 * self.minutes
        self.clock = clock
        self.started_at = clock() if started_at is None else started_at
        self.steps_per_second = steps_per_second

    def elapsed(self):
        return self.clock() - self.started_at

    def remaining(self):
        return self.seconds - self.elapsed()

    @property
    def margin_seconds(self):
        return max(MARGIN_MIN_SECONDS, MARGIN_FRACTION * self.seconds)

    @property
    def warmup_seconds(self):
        """How long the warm-up measures; 0 (steps only) with a given rate."""
        if self.steps_per_second is not None:
            return 0.0
        return min(WARMUP_SECONDS, WARMUP_FRACTION * self.seconds)

    @property
    def refit_seconds(self):
        """How long the re-fit measures the settled speed; 0 (no re-fit) with a given
        rate."""
        if self.steps_per_second is not None:
            return 0.0
        return max(self.warmup_seconds, min(REFIT_SECONDS, REFIT_FRACTION * self.seconds))


def fit_total_steps(config_steps, step_now, steps_per_second, seconds_for_steps):
    """The schedule's total steps: the config's, or fewer if those do not fit.

    `seconds_for_steps` of training at `steps_per_second` from `step_now`; never more
    than `config_steps` (a budget shortens a schedule, it never lengthens one).
    """
    affordable = step_now + int(math.floor(steps_per_second * max(seconds_for_steps, 0.0)))
    return min(int(config_steps), affordable)


def describe_lr(boundaries):
    """[3345, 4181] -> "LR drops at 3,345 and 4,181"; [] -> "constant LR"."""
    if not boundaries:
        return "constant LR"
    steps = [f"{int(step):,}" for step in boundaries]
    listed = steps[0] if len(steps) == 1 else f"{', '.join(steps[:-1])} and {steps[-1]}"
    return f"LR drops at {listed}"


def describe_decision(record):
    """The one line that says what the budget decided (see the module docstring)."""
    head = (f"time budget {record['budget_minutes']:g} min at "
            f"{format_rate(record['steps_per_second'], 'steps')}")
    lr = describe_lr(record["boundaries"])
    if record["scaled"]:
        return (f"{head}: {record['total_steps']:,} steps, {lr} (the config's "
                f"{record['config_steps']:,} steps scaled by "
                f"{record['total_steps'] / record['config_steps']:.3g})")
    return f"{head}: the config's {record['total_steps']:,} steps fit, {lr}"


def describe_kept(record, path):
    return (f"keeping the schedule of {path}: {record['total_steps']:,} steps, "
            f"{describe_lr(record['boundaries'])} (decided for "
            f"{record['budget_minutes']:g} min at "
            f"{format_rate(record['steps_per_second'], 'steps')})")


def apply_total_steps(cfg, total_steps):
    """A new config: `cfg` with the schedule's total steps (SCHEDULE_STEPS), the LR
    boundaries scaled with it (libs.configs). `cfg` is unchanged."""
    return cfg.replace(SCHEDULE_STEPS=int(total_steps), source=cfg.NAME)


def decide_schedule(cfg, budget, steps_per_second, step_now, restart_seconds,
                    save_seconds=0.0):
    """Fits cfg's schedule into what is left of `budget`: (the fitted config, the record).

    The fitted config is a new one (apply_total_steps); `cfg` is unchanged.

    restart_seconds: what building the graph and session again will cost (the
    warm-up's own start-up, measured). save_seconds: what one checkpoint costs (the
    warm-up's last one, measured); the steps of the warm-up window never include one,
    so every checkpoint the rest of the config's schedule would save is taken off the
    time first (a few seconds each; counting the config's, not the fitted schedule's,
    errs on the safe side).
    """
    config_steps = int(cfg.EPOCH_STEPS)     # the config's own (EPOCH, MIN_STEPS)
    saves = math.ceil(max(config_steps - step_now, 0) / max(cfg.SAVE_CHECKPOINTS_STEPS, 1))
    seconds_for_steps = (budget.remaining() - restart_seconds - budget.margin_seconds
                         - saves * save_seconds)
    total = fit_total_steps(config_steps, step_now, steps_per_second, seconds_for_steps)
    scaled = total < config_steps
    if scaled and total <= step_now:
        raise BudgetError(
            f"--max_minutes {budget.minutes:g}: no time left for training after the "
            f"warm-up ({budget.elapsed():.0f} s so far, "
            f"{format_rate(steps_per_second, 'steps')}); give more minutes")
    try:
        fitted = apply_total_steps(cfg, total if scaled else config_steps)
    except ConfigError as exc:
        raise BudgetError(
            f"--max_minutes {budget.minutes:g}: only {total} steps fit at "
            f"{format_rate(steps_per_second, 'steps')}, too few for the LR stages of "
            f"{cfg.NAME} ({exc}); give more minutes") from None
    return fitted, {
        "budget_minutes": budget.minutes, "steps_per_second": steps_per_second,
        "decided_at_step": int(step_now), "seconds_for_steps": seconds_for_steps,
        "checkpoint_seconds": save_seconds, "restart_seconds": restart_seconds,
        "config_steps": config_steps, "total_steps": int(fitted.MAX_STEPS),
        "scaled": scaled, "boundaries": [int(b) for b in fitted.BOUNDARY],
        "lr_values": [float(v) for v in fitted.LR_VALUES]}


def refit_last_step(record):
    """The step by which the re-fit must have measured: halfway from the warm-up's
    decision to the first LR drop, so the drops can still move."""
    decided = int(record["decided_at_step"])
    first = int(record["boundaries"][0]) if record["boundaries"] else int(
        record["total_steps"])
    return decided + max(1, (first - decided) // 2)


def _first_drop_after(cfg, total, step_now):
    """The smallest total >= `total` whose first LR drop is after `step_now`."""
    while True:
        fitted = apply_total_steps(cfg, total)
        if not fitted.BOUNDARY or int(fitted.BOUNDARY[0]) > step_now:
            return fitted
        total += max(1, total // 100)


def refit_schedule(cfg, record, budget, steps_per_second, step_now):
    """Decides the schedule again from the settled rate: (the re-fitted config, or
    None when the running schedule stands, and the record to write).

    `cfg` is the config before any fitting (its own schedule bounds the new one);
    `record` the warm-up's decision (its restart and checkpoint costs are reused). A
    new schedule never puts its first LR drop at or before `step_now`; when no steps
    are left (a machine much slower now) the running schedule stands and the time
    budget's stop in the last LR stage catches the rest.
    """
    info = {"at_step": int(step_now), "steps_per_second": steps_per_second,
            "warmup_steps_per_second": record["steps_per_second"],
            "warmup_total_steps": int(record["total_steps"]),
            "warmup_boundaries": [int(b) for b in record["boundaries"]]}
    try:
        fitted, new = decide_schedule(cfg, budget, steps_per_second, step_now,
                                      record.get("restart_seconds", 0.0),
                                      record.get("checkpoint_seconds", 0.0))
    except BudgetError:
        return None, dict(record, refit=dict(info, changed=False, reason="no time left"))
    fitted = _first_drop_after(cfg, int(fitted.MAX_STEPS), step_now)
    change = abs(fitted.MAX_STEPS - record["total_steps"]) / record["total_steps"]
    if change < REFIT_TOLERANCE:
        return None, dict(record, refit=dict(info, changed=False))
    new.update(total_steps=int(fitted.MAX_STEPS),
               boundaries=[int(b) for b in fitted.BOUNDARY],
               scaled=int(fitted.MAX_STEPS) < new["config_steps"],
               refit=dict(info, changed=True))
    return fitted, new


def describe_refit(record):
    """The one line that says what the re-fit decided."""
    refit = record["refit"]
    head = (f"speed settled at {format_rate(refit['steps_per_second'], 'steps')} (the "
            f"warm-up read {format_rate(refit['warmup_steps_per_second'], 'steps')})")
    if not refit["changed"]:
        why = f", {refit['reason']}" if refit.get("reason") else ""
        return f"{head}: the schedule of {record['total_steps']:,} steps stands{why}"
    return (f"{head}: {record['total_steps']:,} steps, {describe_lr(record['boundaries'])} "
            f"(was {refit['warmup_total_steps']:,})")


def schedule_path(model_dir):
    return os.path.join(model_dir, SCHEDULE_FILE)


def read_schedule(model_dir):
    """The recorded decision of `model_dir`, or None when it has none."""
    path = schedule_path(model_dir)
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
        int(record["total_steps"]), list(record["boundaries"])  # the fields used
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BudgetError(f"{path} is not a schedule this version wrote ({exc}); "
                          f"delete it to decide the schedule again") from None
    return record


def write_schedule(model_dir, record):
    os.makedirs(model_dir, exist_ok=True)
    with atomic_write(schedule_path(model_dir), "w") as handle:
        json.dump(record, handle, indent=2, sort_keys=True)
        handle.write("\n")


def keep_recorded_schedule(cfg, model_dir):
    """model_dir's recorded schedule: (cfg with it applied, the record), or (cfg, None)
    when there is none. `cfg` itself is unchanged.

    Raises BudgetError if the config now gives other LR boundaries for the same total
    (EPOCH or EPOCH_BOUNDARY changed since): the run would change schedule midway.
    """
    record = read_schedule(model_dir)
    if record is None:
        return cfg, None
    kept = apply_total_steps(cfg, record["total_steps"])
    if [int(b) for b in kept.BOUNDARY] != [int(b) for b in record["boundaries"]]:
        raise BudgetError(
            f"{schedule_path(model_dir)} has LR drops at {record['boundaries']} but "
            f"config {cfg.NAME} now gives {kept.BOUNDARY} for {record['total_steps']} "
            f"steps; use another --model_dir or delete the file to decide again")
    return kept, record
