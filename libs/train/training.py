"""Building and running the Estimator: towers, RunConfig, data-dependent settings.

tools/train.py, tools/eval.py and the tests all go through here, so a run is set up the
same way whichever door it comes in by.
"""
import json
import os
import shutil

from absl import logging

from libs.base.tf_compat import tf
from libs.configs import finalize
from libs.train import hooks as hooks_lib
from libs.train import time_budget
from libs.train.model_fn import model_fn


class TrainingError(ValueError):
    """A run that cannot start; the message is one line for the user."""


# ----------------------------------------------------------------------------- devices

def ensure_cpu_devices(count):
    """Splits the CPU into `count` logical devices (must run before TF starts).

    Returns the number of logical CPU devices available afterwards.
    """
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
    except RuntimeError:
        pass  # already initialised: keep whatever split exists
    return len(tf.config.list_logical_devices("CPU"))


def tower_devices(cfg):
    """One device per GPU_GROUPS entry; CPU logical devices when there is no GPU."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        if len(gpus) < cfg.NUM_GPUS:
            raise TrainingError(f"GPU_GROUPS asks for {cfg.NUM_GPUS} GPUs, this machine "
                                f"has {len(gpus)}")
        return list(cfg.GPU_GROUPS)
    devices = [f"/cpu:{i}" for i in range(cfg.NUM_GPUS)]
    if cfg.NUM_GPUS > 1:
        available = ensure_cpu_devices(cfg.NUM_GPUS)
        if available < cfg.NUM_GPUS:
            raise TrainingError(f"{cfg.NUM_GPUS} towers need {cfg.NUM_GPUS} CPU devices "
                                f"but TensorFlow started with {available}")
        logging.warning("No GPU found: the %d towers of GPU_GROUPS %s run on CPU devices "
                        "%s", cfg.NUM_GPUS, list(cfg.GPU_GROUPS), devices)
    return devices


class ClusterTask:
    """This process's place in a multi-worker cluster, read from TF_CONFIG."""

    def __init__(self, task_type, index, num_workers, is_chief):
        self.task_type = task_type
        self.index = index
        self.num_workers = num_workers
        self.is_chief = is_chief

    def __str__(self):
        role = "chief" if self.is_chief else "not chief"
        return f"{self.task_type}:{self.index} of {self.num_workers} workers ({role})"


def cluster_task(environ=None):
    """The ClusterTask that TF_CONFIG describes, or None for one process on its own.

    TF_CONFIG is tf.distribute's own convention: {"cluster": {"chief": [host:port],
    "worker": [host:port, ...]}, "task": {"type": "worker", "index": 0}}. The chief
    (or worker 0 without a chief) writes checkpoints and summaries.
    """
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        config = json.loads(raw)
        cluster, task = dict(config.get("cluster") or {}), dict(config.get("task") or {})
    except (ValueError, TypeError, AttributeError) as exc:
        raise TrainingError(f"TF_CONFIG is not a JSON object with 'cluster' and 'task': "
                            f"{exc}") from exc
    unsupported = sorted(set(cluster) - {"chief", "worker"})
    if unsupported:
        raise TrainingError(f"TF_CONFIG cluster has {unsupported} tasks: only 'chief' and "
                            f"'worker' are supported (MultiWorkerMirroredStrategy)")
    num_workers = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    if num_workers <= 1:
        return None
    task_type, index = task.get("type"), task.get("index", 0)
    if task_type not in cluster or not isinstance(index, int) or not (
            0 <= index < len(cluster[task_type])):
        raise TrainingError(f"TF_CONFIG task {task} is not one of the cluster's tasks "
                            f"{ {name: len(hosts) for name, hosts in cluster.items()} }")
    is_chief = task_type == "chief" or ("chief" not in cluster and index == 0)
    return ClusterTask(task_type, index, num_workers, is_chief)


# Collectives wait at most this long for a peer; a worker that died then fails the
# others instead of hanging them for ever.
COLLECTIVE_TIMEOUT_SECONDS = 300


def make_strategy(cfg):
    """(strategy or None, tower devices): MultiWorkerMirroredStrategy when TF_CONFIG
    names a cluster, MirroredStrategy over several towers, None for one tower."""
    if cluster_task() is not None:
        strategy = tf.distribute.experimental.MultiWorkerMirroredStrategy()
        # The v1 strategy takes no CommunicationOptions argument; its extended object
        # reads them when the Estimator's coordinator configures it for this task, so
        # the timeout goes there (TF 2.15, the version this project pins).
        strategy.extended._communication_options = (  # pylint: disable=protected-access
            tf.distribute.experimental.CommunicationOptions(
                timeout_seconds=COLLECTIVE_TIMEOUT_SECONDS))
        return strategy, ["/cpu:0"]
    devices = tower_devices(cfg)
    if len(devices) == 1:
        return None, devices
    return tf.distribute.MirroredStrategy(devices), devices


# ------------------------------------------------------------------------------ config

def apply_dataset_info(cfg, class_names, num_train_images, adopt_classes=False):
    """Checks NUM_CLASS against the classes and fills NUM_TRAIN_IMAGES (LR boundaries).

    adopt_classes (evaluation, export, prediction): a model whose head does not depend
    on the number of classes takes NUM_CLASS from `class_names` instead (prototypes of
    other classes than it was trained on); any other model must match.
    """
    from libs.train.model_fn import class_count_dependent_parts
    if cfg.NUM_CLASS != len(class_names) + 1:
        blockers = class_count_dependent_parts(cfg)
        if not adopt_classes or blockers:
            hint = (f"; config {cfg.NAME} cannot run with other classes than it was "
                    f"trained on: {', '.join(blockers)}" if adopt_classes else "")
            raise TrainingError(
                f"config {cfg.NAME}: NUM_CLASS = {cfg.NUM_CLASS} but there are "
                f"{len(class_names)} classes {list(class_names)} (+ background = "
                f"{len(class_names) + 1}){hint}")
        logging.info("config %s: NUM_CLASS %d -> %d for the classes %s (the head does "
                     "not depend on the number of classes)", cfg.NAME, cfg.NUM_CLASS,
                     len(class_names) + 1, list(class_names))
        cfg.NUM_CLASS = len(class_names) + 1
        finalize(cfg)
    if cfg.NUM_TRAIN_IMAGES is None:
        cfg.NUM_TRAIN_IMAGES = int(num_train_images)
        finalize(cfg)
    return cfg


def session_config(num_cpu_devices=1):
    """The ConfigProto of every session the project opens.

    Without a GPU, grappler's memory optimizer (GPU swapping/recomputation) has nothing
    to gain, and its cost model prints a multi-line "Error in PredictCost()" warning
    for every crop_and_resize with a dynamic box count, burying the training log.
    """
    from tensorflow.core.protobuf import rewriter_config_pb2
    config = tf.ConfigProto(allow_soft_placement=True,
                            device_count={"CPU": max(1, num_cpu_devices)})
    if not tf.config.list_physical_devices("GPU"):
        config.graph_options.rewrite_options.memory_optimization = \
            rewriter_config_pb2.RewriterConfig.OFF
    return config


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


def make_estimator(cfg, model_dir, params, distribute=True, warm_start_from=None):
    """The Estimator of `cfg` writing to `model_dir`; towers when distribute is True.

    To train it, pass training_hooks(estimator, cfg) to estimator.train (train() does):
    the checkpoint saver comes with them, after the finite-loss guard.
    """
    strategy, devices = make_strategy(cfg) if distribute else (None, ["/cpu:0"])
    cpu_devices = len(devices) if devices[0].startswith("/cpu") else 1
    run_config = make_run_config(cfg, model_dir, strategy, cpu_devices)
    params = dict(params, net_config=cfg)
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


def worker_scratch_dir(model_dir, task):
    """Where a non-chief worker's throwaway checkpoints and summaries go."""
    return os.path.join(model_dir, f"tmp_{task.task_type}_{task.index}")


def checkpoint_step(model_dir):
    """The global step of model_dir's latest checkpoint; None when it has none."""
    latest = tf.train.latest_checkpoint(model_dir) if os.path.isdir(model_dir) else None
    return int(tf.train.load_variable(latest, "global_step")) if latest else None


def describe_start(cfg, model_dir):
    """One log line saying how this run starts: resume, pretrained backbone, or scratch."""
    step = checkpoint_step(model_dir)
    if step is not None:
        return f"resuming {model_dir} from its own checkpoint at step {step}"
    if cfg.INIT_CHECKPOINT:
        frozen = (f", training only {cfg.TRAINABLE_VARIABLES}"
                  if cfg.TRAINABLE_VARIABLES else "")
        return (f"starting {model_dir}: fine-tuning from {cfg.INIT_CHECKPOINT}{frozen}")
    if cfg.CHECKPOINT_DIR:
        return (f"starting {model_dir}: backbone {cfg.NET_NAME} initialised from the "
                f"pretrained checkpoint {cfg.CHECKPOINT_DIR}")
    return (f"starting {model_dir} from scratch (no CHECKPOINT_DIR: every weight is "
            f"randomly initialised)")


# ------------------------------------------------------------------------------- a run

class Run:
    """Everything a train/eval/export command needs, resolved from config + flags."""

    def __init__(self, cfg, data_dir, reference_dir, model_dir, class_names,
                 reference_images, reference_paths=None):
        self.cfg = cfg
        self.data_dir = data_dir
        self.reference_dir = reference_dir
        self.model_dir = model_dir
        self.class_names = class_names
        self.reference_images = reference_images
        self.reference_paths = reference_paths     # {class name: [files]} as loaded

    @property
    def reference_counts(self):
        """Real references per class (the rest of the NUM_SUPPORTS slots are empty)."""
        if not self.reference_paths:
            return None
        return [len(self.reference_paths[name]) for name in self.class_names]

    @property
    def params(self):
        return {"reference_images": self.reference_images,
                "reference_counts": self.reference_counts,
                "class_names": list(self.class_names)}


def prepare_run(cfg, data_dir=None, reference_dir=None, model_dir=None,
                need_references=True, inference=False, classes_from_references=False):
    """Resolves directories, reads the label map, loads the reference images.

    inference (evaluation, export, prediction): a model whose head does not depend on
    the number of classes runs with the classes of the data's label map (see
    apply_dataset_info). classes_from_references (export, prediction), with a
    reference_dir given: when the reference set's classes differ from the label map's,
    the model detects the reference set's classes (new classes from references, no
    retraining; no label map is needed then).
    Raises TrainingError / LabelMapError / ReferenceSetError with one-line messages.
    """
    from data.io import label_map as label_map_lib
    from data.io import reference_set

    new_classes = bool(inference and classes_from_references and reference_dir is not None
                       and need_references and cfg.CLASSIFIER == "comparison")
    data_dir = data_dir or cfg.DATA_DIR
    reference_dir = reference_dir or cfg.REFERENCE_DIR
    model_dir = model_dir or cfg.MODEL_DIR
    comparison = need_references and cfg.CLASSIFIER == "comparison"
    class_names, split_info = None, {}
    try:
        labels = label_map_lib.read_label_map(data_dir)
        class_names = labels.class_names
        split_info = labels.splits.get(cfg.TRAIN_SPLIT, {})
    except label_map_lib.LabelMapError:
        if not new_classes:
            raise
    if new_classes:
        found = reference_set.reference_classes(reference_dir)
        if class_names is None or set(found) != set(class_names):
            class_names = found
    apply_dataset_info(cfg, class_names, split_info.get("num_images", 0) or 1,
                       adopt_classes=inference)
    images, paths = None, None
    if comparison:
        # A class with fewer references than NUM_SUPPORTS (a K-shot set of a dense
        # class) averages the ones it has, with a warning.
        images, paths = reference_set.load_reference_images(
            reference_dir, class_names, cfg.NUM_SUPPORTS, cfg.REFERENCE_SIDE,
            seed=cfg.SEED if cfg.REFERENCE_RANDOM else None, return_paths=True,
            min_supports=1)
    return Run(cfg, data_dir, reference_dir, model_dir, class_names, images,
               {name: list(files) for name, files in paths.items()} if paths else None)


def training_params(run):
    """model_fn params of a training run: records the run's classes (a later fine-tuning
    matches them by name) and prepares INIT_CHECKPOINT's warm start (libs/warm_start)."""
    from libs.train import warm_start
    warm_start.write_class_names(run.model_dir, run.class_names)
    prefix = warm_start.prepare_warm_start(run.cfg, run.model_dir, run.class_names)
    return dict(run.params, warm_start_checkpoint=prefix)


def check_run_split(run, split):
    """DataError now, not an hour into the run, if the TFRecords of `split` are cut short
    or do not hold the images label_map.json counted; returns the number of images."""
    from data.io.input_fn import check_split
    from data.io.label_map import read_label_map
    info = read_label_map(run.data_dir).splits.get(split, {})
    return check_split(run.data_dir, split, info.get("num_images"))


def describe_schedule(cfg, max_steps=None):
    """One log line: towers, steps, the LR stages."""
    lr_values = " -> ".join(f"{value:g}" for value in cfg.LR_VALUES)
    stop = (f" (stopping at step {int(max_steps):,})"
            if max_steps and int(max_steps) != cfg.MAX_STEPS else "")
    return (f"config {cfg.NAME}: {cfg.NUM_GPUS} tower(s) x {cfg.PER_GPU_IMAGE} image(s), "
            f"{cfg.STEPS_PER_EPOCH} steps/epoch, {cfg.MAX_STEPS:,} steps{stop}, "
            f"LR {lr_values}, {time_budget.describe_lr(cfg.BOUNDARY)}")


def keep_recorded_schedule(run):
    """Applies <model_dir>/schedule.json (a budget's decision) to run.cfg, if there is one.

    A run directory keeps the schedule it was started with, whichever command resumes
    it, so its LR boundaries never move midway. Returns the record or None.
    """
    record = time_budget.keep_recorded_schedule(run.cfg, run.model_dir)
    if record is not None:
        logging.info("%s", time_budget.describe_kept(
            record, time_budget.schedule_path(run.model_dir)))
    return record


def fit_schedule_to_budget(run, budget, input_fn, hooks, distribute=True):
    """Warm-up, then the schedule that fits `budget` (libs/train/time_budget.py).

    Trains at the config's own schedule (the first LR stage) while a SpeedMeter times
    the steps and then stops training; decides the schedule, updates run.cfg, records
    it in <model_dir>/schedule.json and logs the decision. Returns the record, or None
    when the config's whole schedule ended within the warm-up.
    """
    cfg = run.cfg
    meter = hooks_lib.SpeedMeter(budget.clock, budget.warmup_seconds,
                                 skip_steps=time_budget.WARMUP_SKIP_STEPS,
                                 min_steps=time_budget.WARMUP_MIN_STEPS)
    save_timer = hooks_lib.SaveTimer(budget.clock)
    called_at = budget.clock()
    estimator = make_estimator(cfg, run.model_dir, training_params(run),
                               distribute=distribute)
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
    record = time_budget.decide_schedule(cfg, budget, rate, step, restart_seconds,
                                         save_seconds)
    time_budget.write_schedule(run.model_dir, record)
    logging.info("%s", time_budget.describe_decision(record))
    return record


def train(run, max_steps=None, distribute=True, hooks=None, budget=None):
    """Trains run.cfg to the end of its schedule (or max_steps); resumes when it can.

    budget (libs.train.time_budget.TimeBudget, from tools/train.py --max_minutes): the whole
    schedule is fitted into that time after a warm-up (see libs/train/time_budget.py); not
    with max_steps. A schedule recorded in the run directory by an earlier budgeted run
    is kept, budget or not. A Progress line shows steps, rate, ETA and loss. Returns the
    global step reached.
    """
    from data.io.input_fn import EVAL as EVAL_MODE
    from data.io.input_fn import TRAIN as TRAIN_MODE
    from data.io.input_fn import make_input_fn
    from libs.base.io_utils import Progress

    cfg = run.cfg
    task = cluster_task() if distribute else None
    if budget is not None and max_steps:
        raise TrainingError("--max_minutes fits the config's whole schedule into the "
                            "time: give it without --max_steps")
    if budget is not None and task is not None:
        raise TrainingError("--max_minutes needs one process: under TF_CONFIG every "
                            "worker must follow the same schedule (set SCHEDULE_STEPS)")
    check_run_split(run, cfg.TRAIN_SPLIT)
    recorded = keep_recorded_schedule(run)
    logging.info("%s", describe_start(cfg, run.model_dir))
    logging.info("%s", describe_schedule(cfg, max_steps))
    reached = checkpoint_step(run.model_dir) or 0
    if task is None and reached >= int(max_steps or cfg.MAX_STEPS):
        # (a budget with no schedule yet: MAX_STEPS is the config's, the most it fits)
        logging.info("nothing to train: %s is at step %d already", run.model_dir, reached)
        return reached
    input_fn = make_input_fn(cfg, TRAIN_MODE, data_dir=run.data_dir)
    progress = Progress(int(max_steps or cfg.MAX_STEPS), "training", unit="steps")
    hooks = list(hooks or []) + [hooks_lib.ProgressHook(progress, training=True)]
    with progress:
        if budget is not None and recorded is None:
            fit_schedule_to_budget(run, budget, input_fn, hooks, distribute=distribute)
            progress.total = cfg.MAX_STEPS
        max_steps = int(max_steps or cfg.MAX_STEPS)
        estimator = make_estimator(cfg, run.model_dir, training_params(run),
                                   distribute=distribute)
        hooks = training_hooks(estimator, cfg) + hooks
        if budget is not None:
            hooks.append(hooks_lib.StopAfterTimeHook(
                budget, last_boundary=cfg.BOUNDARY[-1] if cfg.BOUNDARY else 0,
                total_steps=max_steps))
        if task is None:
            estimator.train(input_fn, max_steps=max_steps, hooks=hooks)
            return estimator.get_variable_value("global_step")
        # Estimator.train refuses a TF_CONFIG cluster; train_and_evaluate runs the
        # distribute coordinator, which trains on every chief/worker task (an EvalSpec
        # is required but only an 'evaluator' task would run it).
        logging.info("multi-worker training: this process is %s", task)
        tf.estimator.train_and_evaluate(
            estimator, tf.estimator.TrainSpec(input_fn, max_steps=max_steps, hooks=hooks),
            tf.estimator.EvalSpec(make_input_fn(cfg, EVAL_MODE, data_dir=run.data_dir),
                                  steps=None))
    if not task.is_chief:
        shutil.rmtree(worker_scratch_dir(run.model_dir, task), ignore_errors=True)
    reached = checkpoint_step(run.model_dir)
    return max_steps if reached is None else reached


def resolve_checkpoint(model_dir, checkpoint=None):
    """The checkpoint to use: `checkpoint` if given, else the latest in model_dir."""
    if checkpoint:
        if not tf.io.gfile.exists(checkpoint + ".index"):
            raise TrainingError(f"--checkpoint {checkpoint}: no such checkpoint "
                                f"({checkpoint}.index is missing)")
        return checkpoint
    latest = tf.train.latest_checkpoint(model_dir) if os.path.isdir(model_dir) else None
    if latest is None:
        raise TrainingError(f"no checkpoint in {model_dir}: train first, or pass "
                            f"--checkpoint")
    return latest


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
    from data.io.input_fn import EVAL as EVAL_MODE
    from data.io.input_fn import make_input_fn
    from libs.base.io_utils import Progress

    cfg = run.cfg
    split = split or cfg.EVAL_SPLIT
    checkpoint = resolve_checkpoint(run.model_dir, checkpoint)
    total = check_run_split(run, split)
    params = run.params if sink is None else dict(run.params, evaluation_sink=sink)
    estimator = make_estimator(cfg, run.model_dir, params, distribute=False)
    input_fn = make_input_fn(cfg, EVAL_MODE, data_dir=run.data_dir, split=split)
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
    from data.io.input_fn import EVAL as EVAL_MODE
    from data.io.input_fn import TRAIN as TRAIN_MODE
    from data.io.input_fn import make_input_fn
    from libs.base.io_utils import Progress

    cfg = run.cfg
    split = split or cfg.EVAL_SPLIT
    check_run_split(run, cfg.TRAIN_SPLIT)
    keep_recorded_schedule(run)
    max_steps = int(max_steps or cfg.MAX_STEPS)
    logging.info("%s", describe_start(cfg, run.model_dir))
    logging.info("%s", describe_schedule(cfg, max_steps))
    logging.info("evaluating each new checkpoint on '%s' (every %d steps)", split,
                 cfg.SAVE_CHECKPOINTS_STEPS)
    estimator = make_estimator(cfg, run.model_dir, training_params(run))
    with Progress(max_steps, "training", unit="steps") as progress:
        train_spec = tf.estimator.TrainSpec(
            make_input_fn(cfg, TRAIN_MODE, data_dir=run.data_dir), max_steps=max_steps,
            hooks=training_hooks(estimator, cfg) + [
                hooks_lib.ProgressHook(progress, training=True)])
        eval_spec = tf.estimator.EvalSpec(
            make_input_fn(cfg, EVAL_MODE, data_dir=run.data_dir, split=split),
            steps=None, name=eval_name(cfg, split), start_delay_secs=0,
            throttle_secs=throttle_secs)
        results, _ = tf.estimator.train_and_evaluate(estimator, train_spec, eval_spec)
    return results
