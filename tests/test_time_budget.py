"""A time budget fits the whole LR schedule (libs/train/time_budget.py, train.py --max_minutes).

The speed is injected (a measured-rate override) and the budget's clock frozen, so the
fitted schedule is the same on every machine and every run.
"""
import copy
import glob
import json
import os

import pytest

from data.io.dataset import open_run
from libs.base.tf_compat import seeded_graph, tf
from libs.configs import ConfigError, load_config
from libs.train import hooks, runs, time_budget, training
from tests.conftest import REPO_ROOT

TINY = os.path.join(REPO_ROOT, "cfgs", "tiny_cpu.py")
BCCD = os.path.join(REPO_ROOT, "cfgs", "bccd_cpu.py")


def frozen_clock():
    return 0.0


# ------------------------------------------------------------------ the arithmetic

def test_a_shorter_schedule_scales_every_boundary_with_the_total():
    """55 epochs of 205 images, LR drops at epochs 40 and 50."""
    cfg = load_config(BCCD, {"NUM_TRAIN_IMAGES": 205, "EPOCH": 55,
                             "EPOCH_BOUNDARY": [40, 50]})
    assert (cfg.MAX_STEPS, cfg.BOUNDARY) == (11275, [8200, 10250])   # unchanged default
    fitted = time_budget.apply_total_steps(cfg, 4600)
    # each boundary keeps its fraction of the run: 40/55 and 50/55 of 4,600
    assert fitted.SCHEDULE_STEPS == fitted.MAX_STEPS == 4600
    assert fitted.BOUNDARY == [int(4600 * 40 / 55), int(4600 * 50 / 55)] == [3345, 4181]
    assert fitted.LR_VALUES == pytest.approx([cfg.LR, cfg.LR / 10, cfg.LR / 100])
    # a new config: the one it was fitted from keeps its own schedule
    assert (cfg.SCHEDULE_STEPS, cfg.MAX_STEPS, cfg.BOUNDARY) == (None, 11275, [8200, 10250])


def test_the_fit_never_lengthens_and_counts_from_the_current_step():
    # fits: the config's schedule as it is
    assert time_budget.fit_total_steps(11275, 90, 6.2, 3000) == 11275
    # does not fit: what the time allows from the step reached
    assert time_budget.fit_total_steps(11275, 90, 1.4, 3000) == 90 + 4200
    # no time left: no new step
    assert time_budget.fit_total_steps(11275, 90, 1.4, -5) == 90


def test_decide_schedule_uses_the_time_left_after_restart_and_margin():
    cfg = load_config(BCCD, {"NUM_TRAIN_IMAGES": 205})
    clock = [100.0]
    budget = time_budget.TimeBudget(55, clock=lambda: clock[0], started_at=0.0)
    config_steps = cfg.EPOCH * 205
    saves = -(-(config_steps - 90) // cfg.SAVE_CHECKPOINTS_STEPS)     # ceil
    loaded = copy.deepcopy(vars(cfg))
    fitted, record = time_budget.decide_schedule(cfg, budget, steps_per_second=1.0,
                                                 step_now=90, restart_seconds=20.0,
                                                 save_seconds=2.0)
    assert vars(cfg) == loaded                  # the decision is a new config
    # 3300 s - 100 s already spent - 20 s to restart - 66 s margin (2% of the budget)
    # - 2 s for each checkpoint the config's schedule would save
    seconds = 3300 - 100 - 20 - 66 - 2.0 * saves
    assert record["seconds_for_steps"] == pytest.approx(seconds)
    total = 90 + int(1.0 * seconds)
    assert record["total_steps"] == total == fitted.MAX_STEPS == fitted.SCHEDULE_STEPS
    assert record["boundaries"] == fitted.BOUNDARY == [
        int(total * b / cfg.EPOCH) for b in cfg.EPOCH_BOUNDARY]
    assert record["scaled"] is True
    assert time_budget.describe_decision(record) == (
        f"time budget 55 min at 1.0 steps/s: {total:,} steps, LR drops at "
        f"{fitted.BOUNDARY[0]:,} and {fitted.BOUNDARY[1]:,} (the config's "
        f"{config_steps:,} steps scaled by {total / config_steps:.3g})")

    fast = load_config(BCCD, {"NUM_TRAIN_IMAGES": 205})
    kept, record = time_budget.decide_schedule(fast, budget, steps_per_second=9.0,
                                               step_now=90, restart_seconds=20.0)
    assert record["scaled"] is False
    assert (kept.MAX_STEPS, kept.BOUNDARY) == (fast.MAX_STEPS, fast.BOUNDARY) == (
        config_steps, [b * 205 for b in fast.EPOCH_BOUNDARY])
    assert time_budget.describe_decision(record) == (
        f"time budget 55 min at 9.0 steps/s: the config's {config_steps:,} steps fit, LR "
        f"drops at {kept.BOUNDARY[0]:,} and {kept.BOUNDARY[1]:,}")


def test_budgets_too_small_fail_in_one_line():
    cfg = load_config(TINY, {"NUM_TRAIN_IMAGES": 8})
    spent = time_budget.TimeBudget(1, clock=lambda: 61.0, started_at=0.0)
    with pytest.raises(time_budget.BudgetError, match="no time left for training after "
                                                      "the warm-up"):
        time_budget.decide_schedule(cfg, spent, 2.0, step_now=8, restart_seconds=0.0)
    # 3 steps cannot hold three LR stages
    with pytest.raises(ConfigError, match="SCHEDULE_STEPS: 3 steps are too few"):
        time_budget.apply_total_steps(cfg, 3)
    for bad in (0, -1, float("nan"), "10"):
        with pytest.raises(time_budget.BudgetError, match="--max_minutes must be a "
                                                          "positive number"):
            time_budget.TimeBudget(bad)


def test_a_recorded_schedule_that_the_config_no_longer_gives_is_refused(tmp_path):
    cfg = load_config(TINY, {"NUM_TRAIN_IMAGES": 8})
    time_budget.write_schedule(str(tmp_path), {"total_steps": 40, "boundaries": [30, 36],
                                               "budget_minutes": 1, "steps_per_second": 1})
    assert time_budget.keep_recorded_schedule(cfg, str(tmp_path / "none")) == (cfg, None)
    kept, record = time_budget.keep_recorded_schedule(cfg, str(tmp_path))
    assert record["total_steps"] == 40
    assert (kept.SCHEDULE_STEPS, kept.MAX_STEPS, kept.BOUNDARY) == (40, 40, [30, 36])
    assert cfg.SCHEDULE_STEPS is None                 # the loaded config is unchanged
    moved = load_config(TINY, {"NUM_TRAIN_IMAGES": 8, "EPOCH_BOUNDARY": [20, 36]})
    with pytest.raises(time_budget.BudgetError, match=r"has LR drops at \[30, 36\] but "
                                                      r"config tiny_cpu now gives"):
        time_budget.keep_recorded_schedule(moved, str(tmp_path))


def _warmup_decision(rate, minutes=30, step=80, at_seconds=60.0):
    """The BCCD config (4,100 steps, drops at 3,075 and 3,690) fitted at `rate` after a
    warm-up that ended at `step`, `at_seconds` into a `minutes` budget."""
    cfg = load_config(BCCD, {"NUM_TRAIN_IMAGES": 205})
    clock = [at_seconds]
    budget = time_budget.TimeBudget(minutes, clock=lambda: clock[0], started_at=0.0)
    fitted, record = time_budget.decide_schedule(cfg, budget, rate, step,
                                                 restart_seconds=10.0, save_seconds=1.0)
    return cfg, budget, clock, fitted, record


def test_a_slow_warm_up_is_refitted_longer_once_the_speed_settles():
    """The newcomer's make bccd: the warm-up minute read 1.4 steps/s (other processes
    busy), the run then went at 1.8. Re-fitted three minutes later, the schedule grows
    to what 1.8 steps/s fits in the time left, the LR drops move with it, both
    decisions are in the record, and the line says so."""
    cfg, budget, clock, fitted, record = _warmup_decision(1.4)
    assert fitted.MAX_STEPS < cfg.MAX_STEPS                  # 1.4 steps/s: scaled down
    assert record["restart_seconds"] == 10.0
    last = time_budget.refit_last_step(record)
    assert last == 80 + (fitted.BOUNDARY[0] - 80) // 2       # halfway to the first drop
    clock[0] = 240.0
    step = 80 + int(1.8 * 180)
    assert step < last
    refitted, new = time_budget.refit_schedule(cfg, record, budget, 1.8, step)
    seconds = 1800 - 240 - 10 - 36 - 1.0 * -(-(4100 - step) // cfg.SAVE_CHECKPOINTS_STEPS)
    total = step + int(1.8 * seconds)
    assert refitted.MAX_STEPS == new["total_steps"] == total > fitted.MAX_STEPS
    assert refitted.BOUNDARY == new["boundaries"] == [int(total * 15 / 20),
                                                      int(total * 18 / 20)]
    assert new["refit"] == {"at_step": step, "steps_per_second": 1.8, "changed": True,
                            "warmup_steps_per_second": 1.4,
                            "warmup_total_steps": fitted.MAX_STEPS,
                            "warmup_boundaries": fitted.BOUNDARY}
    assert time_budget.describe_refit(new) == (
        f"speed settled at 1.8 steps/s (the warm-up read 1.4 steps/s): {total:,} steps, "
        f"LR drops at {total * 15 // 20:,} and {int(total * 18 / 20):,} (was "
        f"{fitted.MAX_STEPS:,})")
    # never longer than the config's own schedule
    longest, _ = time_budget.refit_schedule(cfg, record, budget, 50.0, step)
    assert longest.MAX_STEPS == cfg.MAX_STEPS == 4100


def test_a_fast_warm_up_is_refitted_shorter_and_a_steady_one_stands():
    cfg, budget, clock, fitted, record = _warmup_decision(1.8)
    clock[0] = 240.0
    step = 80 + int(1.4 * 180)
    shorter, new = time_budget.refit_schedule(cfg, record, budget, 1.4, step)
    assert shorter.MAX_STEPS < fitted.MAX_STEPS and new["refit"]["changed"]
    assert shorter.BOUNDARY[0] > step
    # the warm-up read right (within REFIT_TOLERANCE): the running schedule stands
    step = 80 + int(1.8 * 180)
    kept, same = time_budget.refit_schedule(cfg, record, budget, 1.81, step)
    assert kept is None
    assert same["total_steps"] == fitted.MAX_STEPS and not same["refit"]["changed"]
    assert time_budget.describe_refit(same) == (
        f"speed settled at 1.8 steps/s (the warm-up read 1.8 steps/s): the schedule of "
        f"{fitted.MAX_STEPS:,} steps stands")
    # much slower now: never an LR drop before the current step ...
    late = time_budget.refit_last_step(record)
    clock[0] = 1000.0
    fitted_late, late_record = time_budget.refit_schedule(cfg, record, budget, 0.3, late)
    assert fitted_late.BOUNDARY[0] > late and late_record["refit"]["changed"]
    # ... and with no time left the schedule stands (the last-stage stop catches it)
    clock[0] = 1790.0
    none, stands = time_budget.refit_schedule(cfg, record, budget, 0.3, late)
    assert none is None and stands["refit"]["reason"] == "no time left"
    # a given rate (tests, a known machine) is never re-measured
    assert time_budget.TimeBudget(30, steps_per_second=2.0).refit_seconds == 0.0
    assert time_budget.TimeBudget(30).refit_seconds == 180.0      # 10% of the budget
    assert time_budget.TimeBudget(60).refit_seconds == time_budget.REFIT_SECONDS


class FakeRunContext:
    stop_requested = False

    def request_stop(self):
        self.stop_requested = True


def test_speed_meter_times_the_steady_steps_then_stops_training():
    """Steps of 5, 3, 2 s (not timed), six of 1 s, then 0.5 s each: measured over a
    10 s window, the rate is that of the later steps, 2 steps/s (the window's average
    would say 1.4)."""
    clock = [0.0]
    meter = hooks.SpeedMeter(lambda: clock[0], window_seconds=10.0, skip_steps=3,
                             min_steps=5)
    meter.step = 0                              # as after_create_session reads it
    context = FakeRunContext()
    for duration in [5.0, 3.0, 2.0] + [1.0] * 6 + [0.5] * 100:
        meter.before_run(context)
        clock[0] += duration
        meter.after_run(context, None)
        if context.stop_requested:
            break
    assert meter.steady_since == 10.0                  # after the 3 skipped steps
    assert clock[0] == 20.0 and meter.step == 17      # 10 s after them
    assert meter.steps_per_second == pytest.approx(2.0)


def test_save_timer_times_every_checkpoint_save_and_only_the_saves(tmp_path):
    """One duration per checkpoint written, each what the saver took: the clock is
    advanced 3 s inside every save (by a second listener, called after the timer's
    start) and 1 s per training step, which the timer must not count."""
    clock = [0.0]
    timer = hooks.SaveTimer(lambda: clock[0])

    class SlowDisk(tf.estimator.CheckpointSaverListener):
        def before_save(self, session, global_step_value):
            clock[0] += 3.0

    with seeded_graph().as_default():
        step = tf.train.get_or_create_global_step()
        tf.Variable(tf.zeros([10]), name="weights")
        train_op = tf.assign_add(step, 1)
        saver_hook = tf.train.CheckpointSaverHook(str(tmp_path), save_steps=2,
                                                  listeners=[timer, SlowDisk()])
        with tf.train.MonitoredSession(hooks=[saver_hook]) as session:
            for _ in range(5):
                session.run(train_op)
                clock[0] += 1.0
    saved = tf.train.get_checkpoint_state(str(tmp_path)).all_model_checkpoint_paths
    assert len(saved) >= 2 and len(timer.seconds) == len(saved)
    assert timer.seconds == [3.0] * len(saved) and timer.last_seconds == 3.0


# ------------------------------------------------------------------ budgeted runs

RATE = 0.5          # steps/s, injected
MINUTES = 1.0
# frozen clock: nothing spent, no restart cost; margin MARGIN_MIN_SECONDS (> 2% of 60 s)
WARMUP_END = time_budget.WARMUP_SKIP_STEPS + time_budget.WARMUP_MIN_STEPS
FITTED = WARMUP_END + int(RATE * (60 * MINUTES - time_budget.MARGIN_MIN_SECONDS))


def _budgeted_run(sample_data, model_dir, steps_per_second=RATE, hooks_=None, **overrides):
    """(the run, the step reached); the config as loaded is checked to stay as it was:
    the data's values and the budget's schedule are in run.cfg, a new config."""
    cfg = load_config(TINY, overrides)
    loaded = copy.deepcopy(vars(cfg))
    run = open_run(cfg, sample_data["data_dir"], sample_data["reference_dir"],
                               model_dir)
    budget = time_budget.TimeBudget(MINUTES, clock=frozen_clock,
                                    steps_per_second=steps_per_second)
    try:
        return run, training.train(run, budget=budget, hooks=hooks_)
    finally:
        assert vars(cfg) == loaded


def _training_meta_graph(model_dir):
    """The MetaGraphDef of the graph that trained model_dir last (the saver hook writes
    each training session's to the TensorBoard events file)."""
    found = None
    for path in sorted(glob.glob(os.path.join(model_dir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            if event.meta_graph_def:
                found = event.meta_graph_def
    assert found is not None, f"no meta graph in the events of {model_dir}"
    return tf.compat.v1.MetaGraphDef.FromString(found)


def _lr_at_last_checkpoint(model_dir):
    """(global step, LR) of the latest checkpoint, the LR computed by the graph that
    trained it (its meta graph: the boundaries baked into it), not by our config."""
    latest = tf.train.latest_checkpoint(model_dir)
    with seeded_graph().as_default() as graph:
        saver = tf.train.import_meta_graph(_training_meta_graph(model_dir))
        # the learning_rate summary reads the schedule's output
        lr = graph.get_operation_by_name("learning_rate").inputs[1]
        with tf.Session() as session:
            saver.restore(session, latest)
            return int(session.run(tf.train.get_global_step())), float(session.run(lr))


def test_budgeted_run_ends_in_its_last_lr_stage_with_its_final_checkpoint(sample_data,
                                                                          tmp_path):
    """8 train images x 40 epochs = 320 steps with LR drops at 240 and 288 do not fit in
    a minute at 0.5 steps/s: the run is fitted to FITTED steps, drops the LR at the
    same fractions (30/40, 36/40), and its last checkpoint is at FITTED, in the last
    stage, as the graph that trained it computes the LR."""
    model_dir = str(tmp_path / "budget")
    run, step = _budgeted_run(sample_data, model_dir)
    assert FITTED < 240        # the config's first drop is never reached unscaled
    assert step == FITTED
    with open(os.path.join(model_dir, time_budget.SCHEDULE_FILE)) as handle:
        record = json.load(handle)
    assert record["decided_at_step"] == WARMUP_END
    assert record["config_steps"] == 320 and record["total_steps"] == FITTED
    assert record["boundaries"] == [int(FITTED * 30 / 40), int(FITTED * 36 / 40)]
    # the decision is the run's config now: the data's images, the fitted schedule
    assert (run.cfg.NUM_TRAIN_IMAGES, run.cfg.SCHEDULE_STEPS, run.cfg.MAX_STEPS) == (
        8, FITTED, FITTED)
    assert run.cfg.BOUNDARY == record["boundaries"]
    # and the estimator that trained after the warm-up had it (its graph's LR schedule)
    last_step, lr = _lr_at_last_checkpoint(model_dir)
    assert last_step == FITTED
    assert lr == pytest.approx(run.cfg.LR / 100)


class SimulatedKill(Exception):
    pass


class KillAtStep(hooks.StepCounter):
    """Raises in the middle of training, as a kill would end it: no final save."""

    def __init__(self, step):
        super().__init__()
        self.at = step

    def after_run(self, run_context, run_values):
        super().after_run(run_context, run_values)
        if self.step >= self.at:
            raise SimulatedKill(f"killed at step {self.step}")


def test_killed_budgeted_run_keeps_its_schedule_when_rerun(sample_data, tmp_path):
    """Killed after the warm-up and a few steps, the rerun (a faster machine now: 10x
    the rate, which would fit ~250 steps) reads schedule.json instead of measuring
    again: same total, same boundaries, the file untouched, last stage at the end."""
    model_dir = str(tmp_path / "budget")
    with pytest.raises(SimulatedKill):
        _budgeted_run(sample_data, model_dir, hooks_=[KillAtStep(WARMUP_END + 4)],
                      SAVE_CHECKPOINTS_STEPS=2)
    schedule_file = os.path.join(model_dir, time_budget.SCHEDULE_FILE)
    with open(schedule_file, "rb") as handle:
        decided = handle.read()
    killed_at = int(tf.train.load_variable(tf.train.latest_checkpoint(model_dir),
                                           "global_step"))
    assert WARMUP_END < killed_at < FITTED

    run, step = _budgeted_run(sample_data, model_dir, steps_per_second=10 * RATE,
                              SAVE_CHECKPOINTS_STEPS=2)
    assert step == FITTED
    with open(schedule_file, "rb") as handle:
        assert handle.read() == decided
    assert run.cfg.BOUNDARY == [int(FITTED * 30 / 40), int(FITTED * 36 / 40)]
    assert _lr_at_last_checkpoint(model_dir) == (FITTED, pytest.approx(run.cfg.LR / 100))


def test_budget_flag_errors_are_one_line(sample_data, tmp_path):
    cfg = load_config(TINY)
    run = open_run(cfg, sample_data["data_dir"], sample_data["reference_dir"],
                               str(tmp_path / "run"))
    with pytest.raises(runs.TrainingError, match="without --max_steps"):
        training.train(run, max_steps=10, budget=time_budget.TimeBudget(1))


class SimulatedSpeed(tf.train.SessionRunHook):
    """A simulated clock that advances one step's time after each step: `warmup_rate`
    steps/s in the first training session (the warm-up), `rate` in every later one."""

    def __init__(self, warmup_rate, rate):
        self.now = 0.0
        self.rates = (warmup_rate, rate)
        self.sessions = 0

    def clock(self):
        return self.now

    def after_create_session(self, session, coord):
        self.sessions += 1

    def after_run(self, run_context, run_values):
        self.now += 1.0 / self.rates[0 if self.sessions == 1 else 1]


def _simulated_run(sample_data, model_dir, warmup_rate, rate):
    """tiny_cpu for 10 epochs (80 steps, LR drops at 60 and 72) in a 1-minute budget on
    the simulated clock: (run, step reached, schedule.json's record)."""
    cfg = load_config(TINY, {"EPOCH": 10, "EPOCH_BOUNDARY": [7.5, 9]})
    run = open_run(cfg, sample_data["data_dir"], sample_data["reference_dir"], model_dir)
    speed = SimulatedSpeed(warmup_rate, rate)
    budget = time_budget.TimeBudget(1.0, clock=speed.clock, started_at=0.0)
    step = training.train(run, budget=budget, hooks=[speed])
    with open(os.path.join(model_dir, time_budget.SCHEDULE_FILE)) as handle:
        return run, step, json.load(handle)


def test_budgeted_run_refits_after_a_slow_warm_up(sample_data, tmp_path, caplog):
    """Warm-up at 1 step/s (a busy minute), then 4: the warm-up ends at step 8 and fits
    8 + (60 - 8 - 10 margin) = 50 steps (drops at 37, 45); re-measured until step 22
    (halfway to the first drop), 4 steps/s fit the config's whole 80 steps, which the
    run then trains, ending in its last LR stage at 80."""
    caplog.set_level("INFO")
    model_dir = str(tmp_path / "slow_warmup")
    run, step, record = _simulated_run(sample_data, model_dir, warmup_rate=1.0, rate=4.0)
    refit = record["refit"]
    assert (refit["warmup_total_steps"], refit["warmup_boundaries"]) == (50, [37, 45])
    assert refit["at_step"] == 22 and refit["steps_per_second"] == pytest.approx(4.0)
    assert refit["changed"] and record["total_steps"] == 80
    assert record["boundaries"] == run.cfg.BOUNDARY == [60, 72]
    assert step == run.cfg.MAX_STEPS == 80
    assert _lr_at_last_checkpoint(model_dir) == (80, pytest.approx(run.cfg.LR / 100))
    lines = [r.getMessage() for r in caplog.records if "speed settled" in r.getMessage()]
    assert lines == ["speed settled at 4.0 steps/s (the warm-up read 1.0 steps/s): 80 "
                     "steps, LR drops at 60 and 72 (was 50)"]


def test_budgeted_run_refits_after_a_fast_warm_up(sample_data, tmp_path):
    """Warm-up at 4 steps/s, then 1: the config's 80 steps fit at the warm-up's rate;
    re-measured at step 24, 1 step/s leaves 24 + (60 - 12.75 - 10) = 61 steps, LR
    drops at 45 and 54 (after step 24), and the run stops there in its last stage."""
    model_dir = str(tmp_path / "fast_warmup")
    run, step, record = _simulated_run(sample_data, model_dir, warmup_rate=4.0, rate=1.0)
    refit = record["refit"]
    assert (refit["warmup_total_steps"], refit["at_step"]) == (80, 24)
    assert refit["steps_per_second"] == pytest.approx(1.0) and refit["changed"]
    assert record["total_steps"] == step == run.cfg.MAX_STEPS == 61
    assert record["boundaries"] == run.cfg.BOUNDARY == [45, 54]
    assert _lr_at_last_checkpoint(model_dir) == (61, pytest.approx(run.cfg.LR / 100))
