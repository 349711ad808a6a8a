"""Building and running the Estimator: RunConfig, hooks, train, evaluate, time budgets.

tools/train.py, tools/eval.py and the tests all go through here with a run
(libs/train/runs.py), so training is set up the same way whichever door it comes in by.
Every Estimator is built from the run's model_params (runs.model_params), whose
net_config is the config it trains or evaluates. A time budget's schedule (or one
recorded in the run directory) is a new config that replaces run.cfg; the estimators
built after that use it.
"""
import shutil

from absl import logging

from libs.base.io_utils import Progress
from libs.base.tf_compat import tf
from libs.train import hooks as hooks_lib
from libs.train import time_budget
from libs.train.devices import (
    cluster_task,
    make_strategy,
    session_config,
    worker_scratch_dir,
)
from libs.train.model_fn import EVAL, TRAIN, model_fn
from libs.train.runs import (
    TrainingError,
    check_run_split,
    checkpoint_step,
    model_params,
    resolve_checkpoint,
    training_params,
)


def make_run_config(cfg, model_dir, strategy=None, num_cpu_devices=1):
    # No checkpoint schedule here: training_hooks brings the CheckpointSaverHook, after
    # the finite-loss guard (an Estimator-made saver would run before the guard). No
    # graph dumps beside the checkpoints either (see training_hooks).
    session_config_proto = session_config(num_cpu_devices)
    return tf.estimator.RunConfig(
        model_dir=model_dir,
        tf_random_seed=cfg.SEED,
        save_checkpoints_steps=None,
        save_checkpoints_secs=None,
        save_summary_steps=cfg.SAVE_SUMMARY_STEPS,
        keep_checkpoint_max=cfg.KEEP_CHECKPOINT_MAX,
        log_step_count_steps=cfg.LOG_EVERY_N_STEPS,
        session_config=session_config_proto,
        checkpoint_save_graph_def=False,
        train_distribute=strategy)


def make_estimator(params, model_dir, distribute=True, warm_start_from=None):
    """The Estimator of params["net_config"] writing to `model_dir`; towers when
    distribute is True. params: runs.model_params (or training_params) of a run.

    To train it, pass training_hooks(estimator, cfg) to estimator.train (train() does):
    the checkpoint saver comes with them, after the finite-loss guard.
    """
    cfg = params["net_config"]
    strategy, devices = make_strategy(cfg) if distribute else (None, ["/cpu:0"])
    cpu_devices = len(devices) if devices[0].startswith("/cpu") else 1
    run_config = make_run_config(cfg, model_dir, strategy, cpu_devices)
    return tf.estimator.Estimator(model_fn=model_fn, config=run_config, params=params,
                                  warm_start_from=warm_start_from)


def training_hooks(estimator, cfg, saving_listeners=()):
    """[finite-loss guard, checkpoint saver]: the guard first, so a step whose loss or
    gradients are not finite stops training before its weights can be saved.
    saving_listeners: tf.estimator.CheckpointSaverListener, told of each save."""
    task = cluster_task()
    if task is None:
        save_dir = estimator.model_dir if estimator.config.is_chief else None
    else:
        # Saving reads the ON_READ (batch-norm moving average) variables through
        # collectives that every worker must join, so a non-chief worker saves too, on
        # the same schedule, into a scratch folder (TF's own convention for its
        # summaries) that train() removes at the end.
        save_dir = (estimator.model_dir if task.is_chief
                    else worker_scratch_dir(estimator.model_dir, task))
    hooks = [hooks_lib.FiniteLossGuard(estimator.model_dir)]
    if save_dir:
        # save_graph_def=False: no graph.pbtxt (a text dump of the training graph, 8 MB
        # and 3 s at every start for the tiny model) and no .meta file per checkpoint.
        # A checkpoint holds the weights; the graph is rebuilt from the config (as the
        # export does), and TensorBoard still gets it in the events file.
        hooks.append(tf.train.CheckpointSaverHook(save_dir,
                                                  save_steps=cfg.SAVE_CHECKPOINTS_STEPS,
                                                  listeners=list(saving_listeners),
                                                  save_graph_def=False))
    return hooks


def describe_start(cfg, model_dir):
    """One log line saying how this run starts: resume, pretrained backbone, or scratch."""
    step = checkpoint_step(model_dir)
    if step is not None:
        return f"resuming {model_dir} from its own checkpoint at step {step}"
    if cfg.INIT_CHECKPOINT:
        frozen = (f", training only {cfg.TRAINABLE_VARIABLES}"
                  if cfg.TRAINABLE_VARIABLES else "")
        return (f"starting {model_dir}: fine-tuning from {cfg.INIT_CHECKPOINT}{frozen}")
    if cfg.BACKBONE_CHECKPOINT:
        return (f"starting {model_dir}: backbone {cfg.NET_NAME} initialised from the "
                f"pretrained checkpoint {cfg.BACKBONE_CHECKPOINT}")
    return (f"starting {model_dir} from scratch (no BACKBONE_CHECKPOINT: every weight is "
            f"randomly initialised)")


def describe_schedule(cfg, max_steps=None):
    """One log line: towers, steps, the LR stages."""
    lr_values = " -> ".join(f"{value:g}" for value in cfg.LR_VALUES)
    stop = (f" (stopping at step {int(max_steps):,})"
            if max_steps and int(max_steps) != cfg.MAX_STEPS else "")
    return (f"config {cfg.NAME}: {cfg.NUM_GPUS} tower(s) x {cfg.PER_GPU_IMAGE} image(s), "
            f"{cfg.STEPS_PER_EPOCH} steps/epoch, {cfg.MAX_STEPS:,} steps{stop}, "
            f"LR {lr_values}, {time_budget.describe_lr(cfg.BOUNDARY)}")


def keep_recorded_schedule(run):
    """Replaces run.cfg by the config with <model_dir>/schedule.json's schedule (a
    budget's decision), if there is one.

    A run directory keeps the schedule it was started with, whichever command resumes
    it, so its LR boundaries never move midway. Returns the record or None.
    """
    run.cfg, record = time_budget.keep_recorded_schedule(run.cfg, run.model_dir)
    if record is not None:
        logging.info("%s", time_budget.describe_kept(
            record, time_budget.schedule_path(run.model_dir)))
    return record


def fit_schedule_to_budget(run, budget, input_fn, hooks, distribute=True):
    """Warm-up, then the schedule that fits `budget` (libs/train/time_budget.py).

    Trains at the config's own schedule (the first LR stage) while a SpeedMeter times
    the steps and then stops training; decides the schedule, replaces run.cfg by the
    config with that schedule, records it in <model_dir>/schedule.json and logs the
    decision. Returns the record, or None (run.cfg unchanged) when the config's whole
    schedule ended within the warm-up.
    """
    cfg = run.cfg
    meter = hooks_lib.SpeedMeter(budget.clock, budget.warmup_seconds,
                                 skip_steps=time_budget.WARMUP_SKIP_STEPS,
                                 min_steps=time_budget.WARMUP_MIN_STEPS)
    save_timer = hooks_lib.SaveTimer(budget.clock)
    called_at = budget.clock()
    estimator = make_estimator(training_params(run), run.model_dir, distribute=distribute)
    estimator.train(input_fn, max_steps=cfg.EPOCH_STEPS,
                    hooks=training_hooks(estimator, cfg, [save_timer]) + list(hooks)
                    + [meter])
    step = int(estimator.get_variable_value("global_step"))
    if step >= cfg.EPOCH_STEPS:
        logging.info("the config's %d steps ran within the warm-up: nothing to fit", step)
        return None
    rate = budget.steps_per_second or meter.steps_per_second
    if rate is None:
        raise TrainingError(f"could not measure the training speed: the warm-up stopped "
                            f"at step {step}, before its timed steps")
    # Starting again (graph, session, the slow first steps) costs what it cost the
    # warm-up: its time to steady steps, less what those first steps would take at the
    # steady rate.
    steady_since = budget.clock() if meter.steady_since is None else meter.steady_since
    restart_seconds = max(0.0, steady_since - called_at
                          - time_budget.WARMUP_SKIP_STEPS / rate)
    # The warm-up ended with a checkpoint: what writing it took is what each later save
    # will cost. (Its session's close is already spent here; the last run's close is
    # in the margin.)
    save_seconds = save_timer.last_seconds or 0.0
    run.cfg, record = time_budget.decide_schedule(cfg, budget, rate, step, restart_seconds,
                                                  save_seconds)
    time_budget.write_schedule(run.model_dir, record)
    logging.info("%s", time_budget.describe_decision(record))
    return record


def refit_hook(run, unfitted, budget, record):
    """A RefitHook that re-decides the schedule of `record` once the speed has settled
    (libs/train/time_budget.py, step 4); it writes schedule.json and logs the line."""

    def decide(steps_per_second, step):
        fitted, new_record = time_budget.refit_schedule(unfitted, record, budget,
                                                        steps_per_second, step)
        time_budget.write_schedule(run.model_dir, new_record)
        logging.info("%s", time_budget.describe_refit(new_record))
        return fitted

    return hooks_lib.RefitHook(budget.clock, budget.refit_seconds,
                               skip_steps=time_budget.WARMUP_SKIP_STEPS,
                               min_steps=time_budget.WARMUP_MIN_STEPS,
                               last_step=time_budget.refit_last_step(record), decide=decide)


def budget_hooks(estimator, cfg, extra, budget, refit):
    """The training hooks, `extra`, then a budget's stop in the last LR stage and its
    re-fit (last: they read the clock after the step's other hooks)."""
    hooks = training_hooks(estimator, cfg) + list(extra)
    if budget is not None:
        hooks.append(hooks_lib.StopAfterTimeHook(
            budget, last_boundary=cfg.BOUNDARY[-1] if cfg.BOUNDARY else 0,
            total_steps=cfg.MAX_STEPS))
    if refit is not None:
        hooks.append(refit)
    return hooks


def train(run, max_steps=None, distribute=True, hooks=None, budget=None):
    """Trains run.cfg to the end of its schedule (or max_steps); resumes when it can.

    budget (libs.train.time_budget.TimeBudget, from tools/train.py --max_minutes): the whole
    schedule is fitted into that time after a warm-up (see libs/train/time_budget.py); not
    with max_steps. A schedule recorded in the run directory by an earlier budgeted run
    is kept, budget or not. A Progress line shows steps, rate, ETA and loss. Returns the
    global step reached.
    """

    task = cluster_task() if distribute else None
    if budget is not None and max_steps:
        raise TrainingError("--max_minutes fits the config's whole schedule into the "
                            "time: give it without --max_steps")
    if budget is not None and task is not None:
        raise TrainingError("--max_minutes needs one process: under TF_CONFIG every "
                            "worker must follow the same schedule (set SCHEDULE_STEPS)")
    check_run_split(run, run.cfg.TRAIN_SPLIT)
    recorded = keep_recorded_schedule(run)
    cfg = run.cfg                   # with the recorded schedule, if there is one
    logging.info("%s", describe_start(cfg, run.model_dir))
    logging.info("%s", describe_schedule(cfg, max_steps))
    reached = checkpoint_step(run.model_dir) or 0
    if task is None and reached >= int(max_steps or cfg.MAX_STEPS):
        # (a budget with no schedule yet: MAX_STEPS is the config's, the most it fits)
        logging.info("nothing to train: %s is at step %d already", run.model_dir, reached)
        return reached
    input_fn = run.dataset.input_fn(cfg, TRAIN)
    progress = Progress(int(max_steps or cfg.MAX_STEPS), "training", unit="steps")
    hooks = list(hooks or []) + [hooks_lib.ProgressHook(progress, training=True)]
    with progress:
        refit = None
        if budget is not None and recorded is None:
            unfitted = run.cfg
            record = fit_schedule_to_budget(run, budget, input_fn, hooks,
                                            distribute=distribute)
            cfg = run.cfg           # the fitted schedule, which the estimator below trains
            progress.total = cfg.MAX_STEPS
            if record is not None and budget.refit_seconds:
                refit = refit_hook(run, unfitted, budget, record)
        if task is None:
            while True:
                estimator = make_estimator(training_params(run), run.model_dir,
                                           distribute=distribute)
                estimator.train(input_fn, max_steps=int(max_steps or run.cfg.MAX_STEPS),
                                hooks=budget_hooks(estimator, run.cfg, hooks, budget, refit))
                if refit is None or refit.fitted is None:
                    return estimator.get_variable_value("global_step")
                run.cfg, refit = refit.fitted, None     # on under the re-fitted schedule
                progress.total = run.cfg.MAX_STEPS
        max_steps = int(max_steps or cfg.MAX_STEPS)
        estimator = make_estimator(training_params(run), run.model_dir,
                                   distribute=distribute)
        hooks = training_hooks(estimator, cfg) + hooks
        # Estimator.train refuses a TF_CONFIG cluster; train_and_evaluate runs the
        # distribute coordinator, which trains on every chief/worker task (an EvalSpec
        # is required but only an 'evaluator' task would run it).
        logging.info("multi-worker training: this process is %s", task)
        tf.estimator.train_and_evaluate(
            estimator, tf.estimator.TrainSpec(input_fn, max_steps=max_steps, hooks=hooks),
            tf.estimator.EvalSpec(run.dataset.input_fn(cfg, EVAL),
                                  steps=None))
    if not task.is_chief:
        shutil.rmtree(worker_scratch_dir(run.model_dir, task), ignore_errors=True)
    reached = checkpoint_step(run.model_dir)
    return max_steps if reached is None else reached


def eval_name(cfg, split):
    """The evaluation's name: TensorBoard's eval_<name> and the report's suffix. Flip-
    merged figures get their own (<split>_flips), so they never mix with plain ones."""
    return split + ("_flips" if cfg.TEST_FLIPS else "")


def evaluate(run, checkpoint=None, split=None, sink=None):
    """Evaluates a checkpoint on a TFRecord split; returns (results dict, checkpoint).

    results holds the losses and every metric of libs.evaluation.metrics (VOC AP@0.5 per class and
    mAP, COCO mAP / AP50 / AP75 / AR@100) plus global_step. TensorBoard shows them under
    eval_<eval_name>. sink (metrics.EvaluationSink): keeps the evaluation's ground truth
    and detections per image (libs/evaluation/eval_report.py).
    """

    cfg = run.cfg
    split = split or cfg.EVAL_SPLIT
    checkpoint = resolve_checkpoint(run.model_dir, checkpoint)
    total = check_run_split(run, split)
    params = model_params(run) if sink is None else model_params(run, evaluation_sink=sink)
    estimator = make_estimator(params, run.model_dir, distribute=False)
    input_fn = run.dataset.input_fn(cfg, EVAL, split)
    with Progress(total, f"evaluating {split}", unit="images") as progress:
        results = estimator.evaluate(input_fn, checkpoint_path=checkpoint,
                                     hooks=[hooks_lib.ProgressHook(progress)],
                                     name=eval_name(cfg, split))
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in results.items()}, \
        checkpoint


def train_and_evaluate(run, max_steps=None, split=None, throttle_secs=0):
    """Trains like `train` and evaluates every new checkpoint on `split`.

    tf.estimator.train_and_evaluate: the metrics (VOC/COCO) land in
    `<model_dir>/eval_<split>/` so TensorBoard draws the mAP curve beside the losses.
    Evaluation runs without a distribution strategy (its metrics accumulate in Python).
    Returns the last evaluation's results.
    """

    split = split or run.cfg.EVAL_SPLIT
    check_run_split(run, run.cfg.TRAIN_SPLIT)
    keep_recorded_schedule(run)
    cfg = run.cfg                   # with the recorded schedule, if there is one
    max_steps = int(max_steps or cfg.MAX_STEPS)
    logging.info("%s", describe_start(cfg, run.model_dir))
    logging.info("%s", describe_schedule(cfg, max_steps))
    logging.info("evaluating each new checkpoint on '%s' (every %d steps)", split,
                 cfg.SAVE_CHECKPOINTS_STEPS)
    estimator = make_estimator(training_params(run), run.model_dir)
    with Progress(max_steps, "training", unit="steps") as progress:
        train_spec = tf.estimator.TrainSpec(
            run.dataset.input_fn(cfg, TRAIN), max_steps=max_steps,
            hooks=training_hooks(estimator, cfg) + [
                hooks_lib.ProgressHook(progress, training=True)])
        eval_spec = tf.estimator.EvalSpec(
            run.dataset.input_fn(cfg, EVAL, split),
            steps=None, name=eval_name(cfg, split), start_delay_secs=0,
            throttle_secs=throttle_secs)
        results, _ = tf.estimator.train_and_evaluate(estimator, train_spec, eval_spec)
    return results
